"""FHIR R4 XML (R4 xml.html), read into and written from the JSON form the server keeps.

The record holds one form: an XML body is turned into its R4 JSON equivalent (R4 json.html) before anything
else sees it, and a stored resource is turned into XML only on its way out. The codec lives in ``ehr_core``
beside :mod:`ehr_core.resources.json` because it is a representation of the resource, not of HTTP: the REST
layer negotiates it, and ``ehr import`` (:mod:`ehr_core.importing`) reads XML Bundles with it too.

What the mapping needs from the spec (element order, cardinality, types, which elements are XML attributes)
is the generated table :mod:`ehr_core.spec.elements`. The rules it applies (R4 xml.html, json.html):

- a primitive is ``<name value="..."/>``; its ``id`` attribute and ``extension`` children are JSON's
  ``_name`` object; in a repeating primitive the two JSON arrays stay aligned with ``null`` (json.html
  "Repeating Primitives");
- ``boolean`` is a JSON ``true``/``false``, ``integer``/``positiveInt``/``unsignedInt`` a JSON integer,
  ``decimal`` a JSON number keeping its text (:class:`~ehr_core.resources.json.JsonDecimal`), everything else
  a JSON string;
- a choice element ``value[x]`` is named after its type both ways (``valueQuantity``);
- a resource inside another (``contained``, ``Bundle.entry.resource``, ``Parameters.parameter.resource``) is
  wrapped in an element named after its type; JSON says the type in ``resourceType``;
- the narrative ``div`` is XHTML in its own namespace: its text is copied verbatim both ways.

Reading is safe by construction (R4 security.html, xml.html "FHIR resources SHALL NOT contain DTDs"): any
document type declaration is refused before the parser could expand an entity, so no external entity is
fetched and no entity expansion bomb grows; nesting deeper than a limit is refused while parsing, so memory
stays flat; the document must be UTF-8 (xml.html). Every refusal is an :class:`XmlError` naming the line.
"""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat

from ehr_core.resources.json import JsonDecimal
from ehr_core.spec.elements import ELEMENTS, PRIMITIVES, RESOURCES

__all__ = ["FHIR_NS", "XHTML_NS", "XmlError", "from_xml", "to_xml"]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
#: R4 json.html: the JSON types of primitives that are not strings.
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_RESOURCE_TYPES = frozenset({"Resource", "DomainResource"})
_DEFAULT_DEPTH = 100
_XSI = "http://www.w3.org/2001/XMLSchema-instance "


class XmlError(ValueError):
    """The body is not FHIR XML this server reads: the message names where (line) and why."""


Element = tuple[str, bool, tuple[str, ...], bool]


def _choices(owner: str) -> dict[str, tuple[str, str, bool]]:
    """``valueQuantity`` → (``value``, ``Quantity``, repeats) for the choice elements of ``owner``."""
    found: dict[str, tuple[str, str, bool]] = {}
    for name, repeats, types, _attribute in ELEMENTS.get(owner, ()):
        if name.endswith("[x]"):
            base = name[:-3]
            for type_name in types:
                found[base + type_name[0].upper() + type_name[1:]] = (name, type_name, repeats)
    return found


_CHOICES = {owner: _choices(owner) for owner in ELEMENTS}
_BY_NAME: dict[str, dict[str, Element]] = {owner: {e[0]: e for e in fields} for owner, fields in ELEMENTS.items()}


# --- reading ---------------------------------------------------------------------------------------------


class _Node:
    __slots__ = ("attributes", "children", "line", "name", "namespace", "xhtml")

    def __init__(self, namespace: str, name: str, attributes: dict[str, str], line: int) -> None:
        self.namespace = namespace
        self.name = name
        self.attributes = attributes
        self.children: list[_Node] = []
        self.line = line
        self.xhtml: str | None = None


_START_TAG = re.compile(rb"""<[^\s/>]+(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*/?>""")
_END_TAG = re.compile(rb"</[^>]*>")
_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _split(name: str) -> tuple[str, str]:
    namespace, _, local = name.rpartition(" ")
    return namespace, local


def _parse(data: bytes, max_depth: int) -> _Node:
    """The element tree of ``data``, the XHTML ``div`` kept as its source text."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    declared = _ENCODING.match(data)
    if declared and declared.group(1).decode("ascii").lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise XmlError("line 1: FHIR XML must be encoded in UTF-8 (R4 xml.html)")
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    stack: list[_Node] = []
    roots: list[_Node] = []
    # Inside a narrative div: the node, its depth in the document, and where its start tag began.
    xhtml: list[Any] = []

    def refuse(message: str) -> None:
        raise XmlError(f"line {parser.CurrentLineNumber}: {message}")

    def doctype(*_: Any) -> int:
        refuse("a document type declaration (DTD) is not allowed in FHIR XML (R4 xml.html)")
        return 0

    def start(name: str, attributes: dict[str, str]) -> None:
        if len(stack) + len(xhtml) >= max_depth:
            refuse(f"XML nesting is deeper than the limit of {max_depth} levels")
        if xhtml:
            xhtml.append(None)
            return
        namespace, local = _split(name)
        # FHIR attributes are unqualified; xsi:schemaLocation (common in HL7's own files) means nothing here.
        kept = {k: v for k, v in attributes.items() if not k.startswith(_XSI)}
        node = _Node(namespace, local, kept, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        if namespace == XHTML_NS:
            xhtml.append((node, parser.CurrentByteIndex))
            return
        if namespace != FHIR_NS:
            refuse(f"element <{local}> is not in the FHIR namespace {FHIR_NS}")
        stack.append(node)

    def end(_name: str) -> None:
        if xhtml:
            opened = xhtml.pop()
            if xhtml:
                return
            node, begin = opened
            here = parser.CurrentByteIndex
            head = _START_TAG.match(data, begin)
            if head is not None and head.group(0).endswith(b"/>"):  # <div .../>: start and end in one tag
                node.xhtml = head.group(0).decode("utf-8")
            else:
                match = _END_TAG.match(data, here)
                node.xhtml = data[begin : match.end() if match else here].decode("utf-8")
            return
        stack.pop()

    def text(content: str) -> None:
        if not xhtml and content.strip():
            refuse(f"text {content.strip()[:40]!r} outside an attribute; FHIR XML holds values in attributes")

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    parser.ExternalEntityRefHandler = doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise XmlError(f"line {error.lineno} column {error.offset + 1}: {expat.errors.messages[error.code]}") from None
    if len(roots) != 1:
        raise XmlError("line 1: no root element")
    return roots[0]


def _primitive(node: _Node, type_name: str, where: str) -> tuple[Any, dict[str, Any] | None]:
    value: Any = node.attributes.get("value")
    for attribute in node.attributes:
        if attribute not in ("value", "id"):
            raise XmlError(f"line {node.line}: {where} has an unknown attribute {attribute!r}")
    if value is not None:
        if type_name == "boolean":
            if value not in ("true", "false"):
                raise XmlError(f"line {node.line}: {where} must be true or false, not {value!r}")
            value = value == "true"
        elif type_name in _INTEGERS:
            if not _INTEGER.fullmatch(value):
                raise XmlError(f"line {node.line}: {where} must be an integer, not {value!r}")
            value = int(value)
        elif type_name == "decimal":
            if not _DECIMAL.fullmatch(value):
                raise XmlError(f"line {node.line}: {where} must be a decimal, not {value!r}")
            value = JsonDecimal(value)
    extras: dict[str, Any] = {}
    if "id" in node.attributes:
        extras["id"] = node.attributes["id"]
    extensions = []
    for child in node.children:
        if child.name != "extension":
            raise XmlError(f"line {child.line}: {where} is a primitive; <{child.name}> is not allowed in it")
        extensions.append(_complex(child, "Extension", f"{where}.extension"))
    if extensions:
        extras["extension"] = extensions
    if value is None and not extras:
        raise XmlError(f"line {node.line}: {where} has neither a value nor extensions")
    return value, extras or None


def _resource(node: _Node, where: str) -> dict[str, Any]:
    if node.name not in RESOURCES:
        raise XmlError(f"line {node.line}: <{node.name}> is not an R4 resource type")
    if node.attributes:
        raise XmlError(f"line {node.line}: a resource element takes no attributes")
    resource: dict[str, Any] = {"resourceType": node.name}
    resource.update(_complex(node, node.name, where or node.name))
    return resource


def _complex(node: _Node, owner: str, where: str) -> dict[str, Any]:
    fields = _BY_NAME.get(owner)
    if fields is None:
        raise XmlError(f"line {node.line}: no definition for the type {owner}")
    out: dict[str, Any] = {}
    value: Any
    for attribute, text in node.attributes.items():
        known = fields.get(attribute)
        if known is None or not known[3]:
            raise XmlError(f"line {node.line}: {where} has an unknown attribute {attribute!r}")
        out[attribute] = text
    choices = _CHOICES[owner]
    for child in node.children:
        name = child.name
        known = fields.get(name)
        if known is not None and not known[3] and not name.endswith("[x]"):
            repeats, types = known[1], known[2]
            type_name = types[0] if len(types) == 1 else ""
        elif name in choices:
            _, type_name, repeats = choices[name]
        else:
            raise XmlError(f"line {child.line}: unknown element <{name}> in {where}")
        path = f"{where}.{name}"
        if type_name == "xhtml":
            if child.xhtml is None:
                raise XmlError(f"line {child.line}: {path} must be an XHTML <div> in the namespace {XHTML_NS}")
            out[name] = _xhtml(child)
            continue
        if child.namespace != FHIR_NS:
            raise XmlError(f"line {child.line}: <{name}> is not in the FHIR namespace {FHIR_NS}")
        if type_name in PRIMITIVES:
            value, extras = _primitive(child, type_name, path)
            if repeats:
                values = out.setdefault(name, [])
                others = out.setdefault("_" + name, [])
                values.append(value)
                others.append(extras)
            else:
                if name in out or "_" + name in out:
                    raise XmlError(f"line {child.line}: {path} may appear only once")
                if value is not None:
                    out[name] = value
                if extras is not None:
                    out["_" + name] = extras
            continue
        if type_name in _RESOURCE_TYPES or type_name in RESOURCES:
            inner = child.children
            if len(inner) != 1 or child.attributes:
                raise XmlError(f"line {child.line}: {path} must hold exactly one resource")
            value = _resource(inner[0], f"{path}.{inner[0].name}")
        else:
            value = _complex(child, type_name, path)
        if repeats:
            out.setdefault(name, []).append(value)
        elif name in out:
            raise XmlError(f"line {child.line}: {path} may appear only once")
        else:
            out[name] = value
    # Repeating primitives: drop the all-null side of the aligned pair (R4 json.html).
    for key in [k for k in out if k.startswith("_") and isinstance(out[k], list)]:
        if all(item is None for item in out[key]):
            del out[key]
        elif all(item is None for item in out.get(key[1:], [None])):
            out.pop(key[1:], None)
    return out


def _xhtml(node: _Node) -> str:
    text = node.xhtml or ""
    if not text.startswith("<div"):
        raise XmlError(f"line {node.line}: the narrative must be a <div> with the default XHTML namespace")
    head = _START_TAG.match(text.encode("utf-8"))
    if head is not None and b"xmlns=" not in head.group(0):
        # The div took its namespace from an ancestor; in JSON it must declare it itself (R4 json.html).
        text = f'<div xmlns="{XHTML_NS}"' + text[4:]
    return text


def from_xml(data: bytes, max_depth: int = _DEFAULT_DEPTH) -> dict[str, Any]:
    """The R4 JSON form of one FHIR XML resource; :class:`XmlError` for anything this reader refuses."""
    root = _parse(data, max_depth)
    if root.namespace != FHIR_NS:
        raise XmlError(f"line {root.line}: the root element must be in the FHIR namespace {FHIR_NS}")
    return _resource(root, root.name)


# --- writing ---------------------------------------------------------------------------------------------

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_ESCAPE = re.compile('[&<>"\n\r\t]')


def _attribute(value: Any) -> str:
    if value is True:
        text = "true"
    elif value is False:
        text = "false"
    elif isinstance(value, JsonDecimal):
        text = value.text
    else:
        text = str(value)
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], text)


def _write_primitive(out: list[str], name: str, value: Any, extras: Any) -> None:
    out.append(f"<{name}")
    if isinstance(extras, dict) and "id" in extras:
        out.append(f' id="{_attribute(extras["id"])}"')
    if value is not None:
        out.append(f' value="{_attribute(value)}"')
    extensions = extras.get("extension") if isinstance(extras, dict) else None
    if extensions:
        out.append(">")
        for extension in extensions:
            _write_complex(out, "extension", extension, "Extension")
        out.append(f"</{name}>")
    else:
        out.append("/>")


def _write_value(out: list[str], name: str, value: Any, type_name: str) -> None:
    if type_name == "xhtml":
        out.append(value if isinstance(value, str) else "")
    elif type_name in _RESOURCE_TYPES or type_name in RESOURCES:
        out.append(f"<{name}>")
        _write_resource(out, value, declare=False)
        out.append(f"</{name}>")
    elif isinstance(value, dict):
        _write_complex(out, name, value, type_name)
    else:
        _write_primitive(out, name, value, None)


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _write_complex(out: list[str], tag: str, obj: Any, owner: str, head: str = "") -> None:
    if not isinstance(obj, dict):
        _write_primitive(out, tag, obj, None)
        return
    fields = ELEMENTS.get(owner, ())
    out.append(f"<{tag}{head}")
    for name, _repeats, _types, attribute in fields:
        if attribute and name in obj:
            out.append(f' {name}="{_attribute(obj[name])}"')
    out.append(">")
    written = {"resourceType"}
    for name, _repeats, types, attribute in fields:
        if attribute:
            written.add(name)
            continue
        if name.endswith("[x]"):
            base = name[:-3]
            for type_name in types:
                key = base + type_name[0].upper() + type_name[1:]
                if key in obj or "_" + key in obj:
                    _write_field(out, key, obj, type_name)
                    written.update((key, "_" + key))
            continue
        if name in obj or "_" + name in obj:
            _write_field(out, name, obj, types[0] if types else "")
            written.update((name, "_" + name))
    for key in obj:  # elements the R4 definitions lack: kept rather than dropped, in the order given
        if key not in written and not key.startswith("_"):
            for item in _items(obj[key]):
                _write_complex(out, key, item, "")
    out.append(f"</{tag}>")


def _write_field(out: list[str], name: str, obj: dict[str, Any], type_name: str) -> None:
    value, extras = obj.get(name), obj.get("_" + name)
    if type_name in PRIMITIVES and type_name != "xhtml":
        if isinstance(value, list) or isinstance(extras, list):
            values = value if isinstance(value, list) else []
            others = extras if isinstance(extras, list) else []
            for index in range(max(len(values), len(others))):
                item = values[index] if index < len(values) else None
                other = others[index] if index < len(others) else None
                if item is not None or other is not None:
                    _write_primitive(out, name, item, other)
        else:
            _write_primitive(out, name, value, extras)
        return
    for item in _items(value):
        _write_value(out, name, item, type_name)


def _write_resource(out: list[str], resource: Any, declare: bool) -> None:
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise XmlError("a resource without a resourceType cannot be written as XML")
    resource_type = resource["resourceType"]
    _write_complex(out, resource_type, resource, resource_type, f' xmlns="{FHIR_NS}"' if declare else "")


def to_xml(resource: dict[str, Any]) -> bytes:
    """The FHIR XML of one resource in its R4 JSON form (as :mod:`ehr_core.resources.json` reads it)."""
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>']
    _write_resource(out, resource, declare=True)
    return "".join(out).encode("utf-8")
