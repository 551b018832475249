"""FHIRPath Patch (R4 fhirpatch.html: a ``Parameters`` resource of ``operation`` parameters) for the
FHIR ``patch`` interaction (R4 http.html#patch), as a pure function over resource JSON:
:func:`apply_fhirpath_patch`.

What it shares with JSON Patch (copying, errors) is described in :mod:`ehr_core.resources.patch_common`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.tree.Tree import ParseTreeWalker  # type: ignore[import-untyped]
from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from ehr_core.errors import MalformedPatch, PatchNotApplicable
from ehr_core.numbers import parse_int
from ehr_core.resources.patch_common import copy_json

# fhirpathpy ships py.typed but leaves these unannotated; mypy --strict forbids calling unannotated
# functions from typed code, so they are called through Any.
_apply_parsed_path: Any = apply_parsed_path
_ast_listener: Any = ASTPathListener
_fhirpath_parser: Any = FHIRPathParser

__all__ = ["RepeatsLookup", "apply_fhirpath_patch"]


RepeatsLookup = Callable[[str], bool | None]
"""Answers "may this element repeat?" (max cardinality ``*``) for an element path made of JSON property
names from the nearest resource, without indexes or choice-type stripping: ``"Patient.contact"``,
``"Patient.contact.name"``, ``"Observation.valueQuantity.unit"``. ``None`` means "unknown".

The engine needs it where FHIR JSON depends on the definition and the resource cannot tell: adding the
first ``identifier`` to a Patient must make an array, adding ``birthDate`` must not. The caller answers
from the FHIR model (see :func:`apply_fhirpath_patch`)."""

_R4_MODEL: dict[str, Any] = fhirpath_models["r4"]

# Type names that end a choice element's JSON name (``valueQuantity``): every type any R4 choice
# element allows (R4 §2.6.0.1 "Choice of Data Types"), taken from fhirpathpy's R4 model.
_CHOICE_SUFFIXES = frozenset(
    type_name for type_names in _R4_MODEL["choiceTypePaths"].values() for type_name in type_names
)

# Elements that repeat wherever they appear, whatever the resource (R4 §2.24.0 "Element",
# "DomainResource"): the engine knows these without asking.
_ALWAYS_REPEATING = frozenset({"extension", "modifierExtension", "contained"})

_OPERATION_TYPES = ("add", "insert", "delete", "replace", "move")

# fhirpatch.html, "Operations": the parts each operation type needs.
_REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
_KNOWN_PARTS = frozenset({"type", "path", "name", "value", "index", "source", "destination"})

# An element name as it may appear in FHIR JSON (R4 §2.6.2 "JSON representation", "Element names").
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def apply_fhirpath_patch(
    resource: dict[str, Any],
    parameters: dict[str, Any],
    *,
    is_repeating: RepeatsLookup | None = None,
) -> dict[str, Any]:
    """Apply a FHIRPath Patch (a ``Parameters`` resource, R4 fhirpatch.html) to a copy of ``resource``.

    Each ``operation`` parameter has a ``type`` part (``add``, ``insert``, ``delete``, ``replace``,
    ``move``), a ``path`` (a FHIRPath expression: see :func:`_resolve` for how it is evaluated) and the
    parts its type needs: ``name`` and ``value`` for add, ``value`` and ``index`` for insert, ``value``
    for replace, ``source`` and ``destination`` for move. A ``value`` part holds a ``value[x]`` or, for an
    anonymous (backbone) element, nested ``part``s, one per child element ("Add Anonymous Type").

    The operations apply in order, all or nothing: the first that fails raises :class:`PatchError`.
    Rules, from fhirpatch.html:

    * the path must select elements of this resource, and (except for delete) at least one;
    * add needs the path to select exactly one element, appends to the element named ``name`` when it
      repeats, and may fill a non-repeating element only when it has no value yet;
    * insert and move work within the one list the path selects (indexes are 0-based; insert's index may
      equal the list's length, i.e. append);
    * delete removes the one element the path selects, and is no error when it selects nothing;
      elements left empty by a delete are removed too, as FHIR JSON has no empty objects or arrays;
    * replace replaces the one element the path selects, primitive extensions included.

    ``is_repeating`` (see :data:`RepeatsLookup`) tells whether an element may repeat; it is asked when an
    add creates an element that does not exist yet, and for the children of an anonymous value. Without
    an answer the element is written as a single value; ``extension``, ``modifierExtension`` and
    ``contained`` are always arrays. The type of a value is not checked against its place: validating the
    result is the caller's job, as for any update.

    Limitations (each reported as not applicable, never guessed): a path that ends in a function or operator
    (``.where(...)``, ``.first()``) may select only complex elements, not primitive values; the
    ``resolve()`` of another resource is refused because it would patch outside this resource.
    Leniency: ``Patient.text.div`` is accepted although FHIRPath's grammar wants ``div`` (an operator
    keyword) delimited, as the reference implementations and the official test vectors do.
    """
    operations = _read_operations(parameters)
    document: dict[str, Any] = copy_json(resource)
    for operation in operations:
        try:
            _apply_operation(document, operation, is_repeating)
        except _Failure as failure:
            kind = MalformedPatch if failure.malformed else PatchNotApplicable
            raise kind(
                f"FHIRPath Patch operation at index {operation.index} ({operation.summary()}): {failure}",
                index=operation.index,
            ) from None
    return document


class _Failure(Exception):
    """Why one operation failed; :func:`apply_fhirpath_patch` adds which operation it was. ``malformed``
    when the operation itself is wrong rather than not applicable to this resource."""

    def __init__(self, reason: str, *, malformed: bool = False) -> None:
        super().__init__(reason)
        self.malformed = malformed


@dataclass(frozen=True)
class _Operation:
    index: int
    type: str
    path: str
    ast: dict[str, Any]
    name: str | None = None
    value: dict[str, Any] | None = None  # the "value" part itself: value[x], resource, or nested parts
    position: int | None = None  # insert's "index"
    source: int | None = None
    destination: int | None = None

    def summary(self) -> str:
        if self.type == "add":
            return f"add {self.name} to {self.path}"
        return f"{self.type} {self.path}"


def _read_operations(parameters: Any) -> list[_Operation]:
    """Check the Parameters resource (fhirpatch.html, "Parameters") and read its operations; every
    problem found here makes the patch malformed, reported before anything is applied."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise MalformedPatch("a FHIRPath Patch must be a Parameters resource")
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise MalformedPatch("Parameters.parameter must be an array")
    return [_read_operation(index, entry) for index, entry in enumerate(entries)]


def _read_operation(index: int, entry: Any) -> _Operation:
    def malformed(reason: str) -> MalformedPatch:
        return MalformedPatch(f"FHIRPath Patch operation at index {index} {reason}", index=index)

    if not isinstance(entry, dict) or entry.get("name") != "operation":
        raise malformed("is not a parameter named 'operation' (the only parameter a FHIRPath Patch has)")
    raw_parts = entry.get("part")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise malformed("has no parts (it needs at least 'type' and 'path')")
    parts: dict[str, dict[str, Any]] = {}
    for part in raw_parts:
        name = part.get("name") if isinstance(part, dict) else None
        if name not in _KNOWN_PARTS:
            raise malformed(f"has a part named {name!r}; parts are {', '.join(sorted(_KNOWN_PARTS))}")
        if name in parts:
            raise malformed(f"has more than one '{name}' part")
        parts[name] = part
    op_type = _primitive_part(parts, "type", str, malformed)
    if op_type not in _REQUIRED_PARTS:
        raise malformed(f"has type {op_type!r}; the types are {', '.join(_OPERATION_TYPES)}")
    for required in _REQUIRED_PARTS[op_type]:
        if required not in parts:
            raise malformed(f"({op_type}) has no '{required}' part")
    path = _primitive_part(parts, "path", str, malformed)
    try:
        ast = _parse_fhirpath(path)
    except _Failure as failure:
        raise malformed(f"({op_type}) has a path, {path!r}, that is not valid FHIRPath: {failure}") from None
    name = _primitive_part(parts, "name", str, malformed) if op_type == "add" else None
    if name is not None and (not _ELEMENT_NAME.fullmatch(name) or name == "resourceType"):
        raise malformed(f"(add) names {name!r}, which is not an element name")
    numbers: dict[str, int | None] = {}
    for number in ("index", "source", "destination"):
        numbers[number] = None
        if number in _REQUIRED_PARTS[op_type]:
            value = _primitive_part(parts, number, int, malformed)
            if value < 0:
                raise malformed(f"({op_type}) has a negative '{number}'")
            numbers[number] = value
    return _Operation(
        index=index,
        type=op_type,
        path=path,
        ast=ast,
        name=name,
        value=parts.get("value"),
        position=numbers["index"],
        source=numbers["source"],
        destination=numbers["destination"],
    )


def _primitive_part(
    parts: dict[str, dict[str, Any]],
    name: str,
    kind: type[str] | type[int],
    malformed: Callable[[str], MalformedPatch],
) -> Any:
    """The value of a part holding a primitive: ``type`` is a code, ``path`` and ``name`` strings,
    ``index``, ``source`` and ``destination`` integers. Any ``value[x]`` of the right JSON type is
    accepted (a client sending ``valueString`` for ``type`` is understood)."""
    part = parts.get(name)
    values = [value for key, value in (part or {}).items() if _is_value_key(key)]
    if len(values) != 1:
        raise malformed(f"has a '{name}' part without exactly one value[x]")
    value = values[0]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = "an integer" if kind is int else "a string"
        raise malformed(f"has a '{name}' part whose value is not {expected}")
    return value


def _is_value_key(key: str) -> bool:
    return key.startswith("value") and len(key) > len("value") and key[len("value")].isupper()


# --- FHIRPath parsing -------------------------------------------------------------------------------


class _RaiseOnSyntaxError:
    """An ANTLR error listener (duck-typed, as ANTLR only calls these methods) that stops at the first
    syntax error. fhirpathpy's own ``parse`` ignores syntax errors and stops at the longest valid
    prefix, so ``Patient.name)`` would silently patch ``Patient.name``."""

    def syntaxError(
        self, recognizer: Any, offending_symbol: Any, line: int, column: int, message: str, error: Any
    ) -> None:
        # ANTLR appends the whole set of tokens it expected ("expecting {'+', '-', ...}"): too much to read.
        raise _Failure(f"syntax error at character {column + 1}: {message.split(' expecting ')[0]}", malformed=True)

    def reportAmbiguity(self, *args: Any) -> None:
        pass

    def reportAttemptingFullContext(self, *args: Any) -> None:
        pass

    def reportContextSensitivity(self, *args: Any) -> None:
        pass


# An operator keyword used as an element name right after a dot, as in ``Patient.text.div``: FHIRPath's
# grammar wants it delimited (``Patient.text.`div` ``), as ``div`` is the integer division operator.
_KEYWORD_MEMBER = re.compile(r"\.(\s*)(div|mod|and|or|xor|implies)(?![A-Za-z0-9_])")


def _delimit_keyword_members(text: str) -> str:
    """Delimit keywords used as element names (outside string literals and delimited identifiers).
    After a dot only a name or a function call can follow, so the rewrite cannot change the meaning
    of a valid expression; it accepts what clients write for Narrative.div (the test vectors do)."""
    pieces = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in "'`":  # a string literal or a delimited identifier: copy it unchanged
            end = position + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            pieces.append(text[position : end + 1])
            position = end + 1
            continue
        keyword = _KEYWORD_MEMBER.match(text, position)
        if keyword is not None:
            pieces.append(f".{keyword.group(1)}`{keyword.group(2)}`")
            position = keyword.end()
            continue
        pieces.append(char)
        position += 1
    return "".join(pieces)


def _parse_fhirpath(text: str) -> dict[str, Any]:
    """Parse a whole FHIRPath expression into fhirpathpy's AST; a keyword used as an element name is
    accepted (see :func:`_delimit_keyword_members`), and any other syntax error is reported."""
    try:
        return _parse_strict(text)
    except _Failure:
        lenient = _delimit_keyword_members(text)
        if lenient == text:
            raise
    try:
        return _parse_strict(lenient)
    except _Failure:
        pass
    return _parse_strict(text)  # raises the error of the text as written


def _parse_strict(text: str) -> dict[str, Any]:
    """Parse with the grammar's ``entireExpression`` rule (an expression, then the end of the text),
    stopping at the first syntax error."""
    listener = _RaiseOnSyntaxError()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = _fhirpath_parser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        tree = parser.entireExpression()
    except _Failure:
        raise
    except Exception as error:  # ANTLR's recognition errors; the listener normally fires first
        raise _Failure(f"cannot parse: {error}", malformed=True) from None
    if parser.getCurrentToken().type != Token.EOF:  # pragma: no cover - entireExpression requires EOF
        raise _Failure("unexpected text after the expression", malformed=True)
    builder = _ast_listener()
    ParseTreeWalker().walk(builder, tree.expression())
    ast: dict[str, Any] = builder.parentStack[0]["children"][0]
    return ast


def _evaluate(document: dict[str, Any], ast: dict[str, Any]) -> list[Any]:
    """Evaluate an AST on the document. ``returnRawData`` keeps fhirpathpy's nodes, whose ``data`` is
    the very dict or list item of the document, so results can be found in it by identity."""
    try:
        result = _apply_parsed_path(
            document,
            {"children": [ast]},
            {"resource": document, "rootResource": document},
            _R4_MODEL,
            {"returnRawData": True},
        )
    except Exception as error:  # fhirpathpy raises plain Exception, e.g. "Not implemented: foo"
        raise _Failure(f"the path cannot be evaluated: {error}", malformed=True) from None
    return [node.data if isinstance(node, ResourceNode) else node for node in result]


# --- Locating elements in the JSON ------------------------------------------------------------------


class _Element(NamedTuple):
    """One element as FHIR JSON stores it (R4 §2.6.2.7 "JSON representation of primitive elements"):
    its value under ``name`` and, for a primitive, its id and extensions under ``_name``."""

    value: Any  # None when a primitive has extensions only
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Slot:
    """Where one element lives: ``parent[name]``, or ``parent[name][index]`` when it repeats.
    ``parent`` is ``None`` for the resource itself."""

    parent: dict[str, Any] | None
    name: str = ""
    index: int | None = None


_ROOT = _Slot(None)


@dataclass(frozen=True)
class _Place:
    """What the document index knows about one JSON object."""

    slot: _Slot  # the element it is (for a ``_name`` object: the primitive it belongs to)
    path: str  # its element path, for :data:`RepeatsLookup`, e.g. "Patient.contact.name"
    companion: bool  # it is the ``_name`` object of a primitive


def _index(document: dict[str, Any]) -> dict[int, _Place]:
    """Map every JSON object of the document (by identity) to its place. Built afresh for each
    operation, as the previous one may have moved things."""
    places = {id(document): _Place(_ROOT, str(document.get("resourceType", "")), False)}
    pending = [(document, places[id(document)].path)]
    while pending:
        node, path = pending.pop()
        for key, value in node.items():
            companion = key.startswith("_")
            name = key[1:] if companion else key
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for position, item in items:
                if isinstance(item, dict):
                    # A contained resource starts a path of its own, as its elements are defined by its type.
                    kind = item.get("resourceType")
                    item_path = kind if isinstance(kind, str) and not companion else f"{path}.{name}"
                    places[id(item)] = _Place(_Slot(node, name, position), item_path, companion)
                    pending.append((item, item_path))
    return places


def _resolve(document: dict[str, Any], ast: dict[str, Any], places: dict[int, _Place]) -> list[_Slot]:
    """The elements a path selects, in FHIRPath order.

    fhirpathpy evaluates FHIRPath, but a primitive it returns is a bare ``str``/``int``/``bool`` that
    cannot be found in the document, and it drops a primitive's ``_name`` object. So navigation, the
    part every FHIRPath Patch path is made of (``Patient.contact[0].name.given``), is followed here
    exactly as FHIRPath defines it (FHIRPath §5 "Navigation model", §5.1.1 "Indexer"): the named child
    of each parent element, repeats flattened, a choice element by its type-named property, a
    primitive's ``id`` and ``extension`` in its ``_name`` object, and an index applying to the whole
    collection. Any other expression (``.where(...)``, ``.ofType(...)``, ``%resource``) is evaluated by
    fhirpathpy and must select complex elements, which are found in the document by identity.
    """
    shape = _member_shape(ast)
    if shape is None:
        return _resolve_complex(document, ast, places)
    parent_ast, member, position = shape
    if parent_ast is None:
        if member == document.get("resourceType"):
            # A bare type name is the resource itself (FHIRPath §5.1 "Paths and polymorphic items").
            return [_ROOT] if position in (None, 0) else []
        parents: list[dict[str, Any]] = [document]
    else:
        parents = []
        seen: set[int] = set()
        for slot in _resolve(document, parent_ast, places):
            container = _children_of(document, slot)
            if container is not None and id(container) not in seen:
                seen.add(id(container))
                parents.append(container)
    slots: list[_Slot] = []
    for parent in parents:
        key = _member_key(parent, member)
        if key is None:
            continue
        values, extras = parent.get(key), parent.get(f"_{key}")
        if isinstance(values, list) or isinstance(extras, list):
            count = max(len(values or []), len(extras or []))
            slots.extend(_Slot(parent, key, item) for item in range(count))
        else:
            slots.append(_Slot(parent, key))
    if position is not None:
        return slots[position : position + 1]
    return slots


def _children_of(document: dict[str, Any], slot: _Slot) -> dict[str, Any] | None:
    """The JSON object holding an element's children: a complex element's own object, or a
    primitive's ``_name`` object (its id and extensions, R4 §2.6.2.7), ``None`` if it has none."""
    if slot.parent is None:
        return document
    element = _get(slot)
    return element.value if _is_complex(element.value) else element.extra


def _resolve_complex(document: dict[str, Any], ast: dict[str, Any], places: dict[int, _Place]) -> list[_Slot]:
    slots: list[_Slot] = []
    for data in _evaluate(document, ast):
        if not isinstance(data, dict):
            raise _Failure(
                "the path selects a primitive value through a function or operator; "
                "end the path with the element's name (e.g. Patient.name.where(use = 'official').family)"
            )
        place = places.get(id(data))
        if place is None:
            raise _Failure("the path leads outside the resource being patched")
        if place.slot not in slots:
            slots.append(place.slot)
    return slots


def _member_shape(ast: dict[str, Any]) -> tuple[dict[str, Any] | None, str, int | None] | None:
    """Split ``parent.member`` or ``parent.member[n]`` (or a bare ``member``, ``member[n]``) into its
    parent AST (``None`` for a bare member), member name and index; ``None`` for any other shape."""
    position = None
    if ast["type"] == "IndexerExpression":
        target, index_ast = ast["children"]
        literal = _descend(index_ast, "TermExpression", "LiteralTerm", "NumberLiteral")
        position = None if literal is None else parse_int(str(literal.get("text", "")))
        if position is None:
            return None
        ast = target
    if ast["type"] == "InvocationExpression":
        parent, invocation = ast["children"]
        identifier = _descend(invocation, "MemberInvocation", "Identifier")
        if identifier is None:
            return None
        return parent, _identifier_name(identifier), position
    identifier = _descend(ast, "TermExpression", "InvocationTerm", "MemberInvocation", "Identifier")
    if identifier is None:
        return None
    return None, _identifier_name(identifier), position


def _descend(node: dict[str, Any], *types: str) -> dict[str, Any] | None:
    """Follow single-child AST nodes of the given types; the last node, or ``None`` if the shape differs."""
    if node.get("type") != types[0]:
        return None
    for node_type in types[1:]:
        children = node.get("children", [])
        if len(children) != 1 or children[0].get("type") != node_type:
            return None
        node = children[0]
    return node


def _identifier_name(identifier: dict[str, Any]) -> str:
    text = str(identifier["text"])
    return text[1:-1] if text.startswith("`") and text.endswith("`") else text  # `delimited`


def _member_key(parent: dict[str, Any], member: str) -> str | None:
    """The JSON property holding FHIRPath member ``member``: itself, or for a choice element
    (``Observation.value``) the property naming its type (``valueQuantity``)."""
    if member in parent or f"_{member}" in parent:
        return member
    for key in parent:
        name = key.lstrip("_")
        if name.startswith(member) and name[len(member) :] in _CHOICE_SUFFIXES:
            return name
    return None


# --- Reading and writing elements --------------------------------------------------------------------


def _load_list(parent: dict[str, Any], name: str) -> list[_Element]:
    """A repeating element as a list of elements, its ``name`` and ``_name`` arrays zipped."""
    values, extras = parent.get(name), parent.get(f"_{name}")
    values = values if isinstance(values, list) else []
    extras = extras if isinstance(extras, list) else []
    return [
        _Element(
            values[item] if item < len(values) else None,
            extras[item] if item < len(extras) else None,
        )
        for item in range(max(len(values), len(extras)))
    ]


def _store_list(parent: dict[str, Any], name: str, elements: list[_Element]) -> None:
    """Write a repeating element back; the ``_name`` array appears only when some item has extensions,
    and an element left with no items disappears (FHIR JSON has no empty arrays)."""
    values = [element.value for element in elements]
    extras = [element.extra for element in elements]
    _put(parent, name, values if any(value is not None for value in values) else None)
    _put(parent, f"_{name}", extras if any(extra is not None for extra in extras) else None)


def _put(parent: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        parent.pop(key, None)
    else:
        parent[key] = value  # an existing key keeps its place in the object


def _get(slot: _Slot) -> _Element:
    assert slot.parent is not None
    if slot.index is None:
        return _Element(slot.parent.get(slot.name), slot.parent.get(f"_{slot.name}"))
    return _load_list(slot.parent, slot.name)[slot.index]


def _set(slot: _Slot, element: _Element) -> None:
    assert slot.parent is not None
    if slot.index is None:
        _put(slot.parent, slot.name, element.value)
        _put(slot.parent, f"_{slot.name}", element.extra)
    else:
        elements = _load_list(slot.parent, slot.name)
        elements[slot.index] = element
        _store_list(slot.parent, slot.name, elements)


def _remove(slot: _Slot) -> None:
    assert slot.parent is not None
    if slot.index is None:
        _put(slot.parent, slot.name, None)
        _put(slot.parent, f"_{slot.name}", None)
    else:
        elements = _load_list(slot.parent, slot.name)
        del elements[slot.index]
        _store_list(slot.parent, slot.name, elements)


def _is_complex(value: Any) -> bool:
    return isinstance(value, dict)


# --- The operations ----------------------------------------------------------------------------------


def _apply_operation(document: dict[str, Any], operation: _Operation, lookup: RepeatsLookup | None) -> None:
    places = _index(document)
    slots = _resolve(document, operation.ast, places)
    if operation.type == "delete":
        _delete(document, slots, places)
        return
    if not slots:
        raise _Failure("no element matches the path")
    if operation.type == "add":
        _add(document, operation, slots, places, lookup)
    elif operation.type == "replace":
        _replace(operation, slots, places, lookup)
    else:
        _reorder(operation, slots, places, lookup)


def _delete(document: dict[str, Any], slots: list[_Slot], places: dict[int, _Place]) -> None:
    """fhirpatch.html: "delete: Path of the element to delete (if found)... Only a single element can
    be deleted"."""
    if not slots:
        return  # nothing there: deleting it again is not an error
    if len(slots) > 1:
        raise _Failure(f"the path matches {len(slots)} elements, and delete removes exactly one")
    slot = slots[0]
    if slot.parent is None:
        raise _Failure("the resource itself cannot be deleted by a patch")
    _remove(slot)
    # Remove the ancestors this left empty: FHIR JSON has no empty objects (R4 §2.6.2, "JSON").
    container = slot.parent
    while container is not document and not container:
        place = places[id(container)]
        owner = place.slot
        if place.companion:  # the "_name" object of a primitive: drop it, keep the value if any
            element = _get(owner)
            if element.value is not None:
                _set(owner, _Element(element.value, None))
                break
        _remove(owner)
        assert owner.parent is not None
        container = owner.parent


def _add(
    document: dict[str, Any],
    operation: _Operation,
    slots: list[_Slot],
    places: dict[int, _Place],
    lookup: RepeatsLookup | None,
) -> None:
    """fhirpatch.html: "add: The content will be appended to the element identified in the path, using
    the name specified. Add can be used for non-repeating elements as long as they do not already exist"."""
    assert operation.name is not None and operation.value is not None
    if len(slots) > 1:
        raise _Failure(f"the path matches {len(slots)} elements, and add needs exactly one")
    target = slots[0]
    if target.parent is None:
        container, container_path = document, places[id(document)].path
    else:
        element = _get(target)
        if _is_complex(element.value):
            container = element.value
            container_path = places[id(container)].path
        else:
            # A primitive's own children live in its "_name" object (R4 §2.6.2.7).
            if operation.name not in ("id", "extension"):
                raise _Failure(f"the path selects a primitive value, which has no element '{operation.name}'")
            container = element.extra if element.extra is not None else {}
            _set(target, _Element(element.value, container))
            container_path = _element_path(target, places)
    name = operation.name
    path = f"{container_path}.{name}"
    new = _value_of(operation.value, path, lookup)
    if name in container or f"_{name}" in container:
        if isinstance(container.get(name), list) or isinstance(container.get(f"_{name}"), list):
            elements = _load_list(container, name)
            elements.append(new)
            _store_list(container, name, elements)
            return
        raise _Failure(f"{name} already has a value and does not repeat; use replace to change it")
    if _repeats(name, path, lookup):
        _store_list(container, name, [new])
    else:
        _put(container, name, new.value)
        _put(container, f"_{name}", new.extra)


def _replace(
    operation: _Operation, slots: list[_Slot], places: dict[int, _Place], lookup: RepeatsLookup | None
) -> None:
    """fhirpatch.html: "replace: Path of the element to replace; value to replace it with". The whole
    element is replaced: a primitive's extensions go with its old value."""
    assert operation.value is not None
    if len(slots) > 1:
        raise _Failure(f"the path matches {len(slots)} elements, and replace needs exactly one")
    slot = slots[0]
    if slot.parent is None:
        raise _Failure("the resource itself cannot be replaced by a patch (that is an update)")
    _set(slot, _value_of(operation.value, _element_path(slot, places), lookup))


def _reorder(
    operation: _Operation, slots: list[_Slot], places: dict[int, _Place], lookup: RepeatsLookup | None
) -> None:
    """insert ("The content will be inserted into the nominated list at the index specified (0 based).
    The index ... must be equal or less than the number of elements in the list") and move ("Move an
    element within a single list")."""
    first = slots[0]
    if first.parent is None or any(slot.index is None for slot in slots):
        raise _Failure(f"the path does not select a list, so there is nothing to {operation.type} within")
    if any(slot.parent is not first.parent or slot.name != first.name for slot in slots):
        raise _Failure("the path selects elements of more than one list")
    elements = _load_list(first.parent, first.name)
    if operation.type == "insert":
        assert operation.position is not None and operation.value is not None
        if operation.position > len(elements):
            raise _Failure(f"index {operation.position} is beyond the end of the list ({len(elements)} items)")
        elements.insert(operation.position, _value_of(operation.value, _element_path(first, places), lookup))
    else:
        assert operation.source is not None and operation.destination is not None
        for label, position in (("source", operation.source), ("destination", operation.destination)):
            if position >= len(elements):
                raise _Failure(f"{label} {position} is not in the list ({len(elements)} items, from 0)")
        elements.insert(operation.destination, elements.pop(operation.source))
    _store_list(first.parent, first.name, elements)


def _element_path(slot: _Slot, places: dict[int, _Place]) -> str:
    assert slot.parent is not None
    return f"{places[id(slot.parent)].path}.{slot.name}"


def _repeats(name: str, path: str, lookup: RepeatsLookup | None) -> bool:
    if name in _ALWAYS_REPEATING:
        return True
    return bool(lookup(path)) if lookup is not None else False


def _value_of(part: dict[str, Any], path: str, lookup: RepeatsLookup | None) -> _Element:
    """The element a ``value`` part carries (fhirpatch.html, "value: Datatype to add"): a ``value[x]``
    (with its ``_value[x]`` for a primitive's extensions), a ``resource``, or, for an anonymous type,
    nested ``part``s named after the child elements. ``path`` is the element's path, for the children's
    cardinality. The value is copied: the result shares nothing with the patch."""
    keys = [key for key in part if _is_value_key(key)]
    companions = [key for key in part if key.startswith("_") and _is_value_key(key[1:])]
    kinds = len(keys) + ("resource" in part) + ("part" in part)
    if kinds != 1 and not (kinds == 0 and len(companions) == 1):
        raise _Failure(
            "the 'value' part must hold exactly one of a value[x], a resource or nested parts", malformed=True
        )
    if keys or companions:
        key = keys[0] if keys else companions[0][1:]
        extra = part.get(f"_{key}")
        if extra is not None and not isinstance(extra, dict):
            raise _Failure(f"_{key} must be an object", malformed=True)
        return _Element(copy_json(part.get(key)), copy_json(extra))
    if "resource" in part:
        if not isinstance(part["resource"], dict):
            raise _Failure("the 'value' part's resource must be an object", malformed=True)
        return _Element(copy_json(part["resource"]))
    children = part["part"]
    if not isinstance(children, list) or not children:
        raise _Failure("the 'value' part's nested parts must be a non-empty array", malformed=True)
    value: dict[str, Any] = {}
    for child in children:
        name = child.get("name") if isinstance(child, dict) else None
        if not isinstance(name, str) or not _ELEMENT_NAME.fullmatch(name) or name == "resourceType":
            raise _Failure(
                f"a nested part of the value is named {name!r}, which is not an element name", malformed=True
            )
        child_path = f"{path}.{name}"
        element = _value_of(child, child_path, lookup)
        if name in value or f"_{name}" in value:
            # The same name twice: a repeating element, unless the model says otherwise.
            if name not in _ALWAYS_REPEATING and lookup is not None and lookup(child_path) is False:
                raise _Failure(f"the value gives {name} more than once, but it does not repeat", malformed=True)
            if isinstance(value.get(name), list) or isinstance(value.get(f"_{name}"), list):
                elements = _load_list(value, name)
            else:  # the first one was written as a single value: make it the first item
                elements = [_Element(value.pop(name, None), value.pop(f"_{name}", None))]
            elements.append(element)
            _store_list(value, name, elements)
        elif _repeats(name, child_path, lookup):
            _store_list(value, name, [element])
        else:
            _put(value, name, element.value)
            _put(value, f"_{name}", element.extra)
    return _Element(value)
