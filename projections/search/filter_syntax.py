"""The ``_filter`` expression language, parsed (FHIR R4 search_filter.html, "_filter Parameter").

A small recursive-descent parser over the R4 grammar::

    filter     = paramExp / logExp / ("not") "(" filter ")"
    logExp     = filter ("and" / "or" filter)+
    paramExp   = paramPath SP compareOp SP compValue
    paramPath  = paramName [ "[" filter "]" ] [ "." paramPath ]
    compValue  = string / numberOrDate / token
    string     = a JSON string: '"' ... '"', with \\" and the other JSON escapes
    token      = any run of non-whitespace characters but "]" and ")"

The grammar leaves ``and`` and ``or`` unordered; as in FHIRPath and SQL, ``not`` binds tightest, then
``and``, then ``or``, so ``a or b and c`` is ``a or (b and c)``; parentheses say otherwise. Keywords and
operators are matched case-insensitively, as ABNF quoted strings are. No PyPI library parses this
language (checked: none is published for Python), hence this module; it knows nothing of search
parameters — :mod:`projections.search.filter` gives the tree its meaning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = [
    "OPERATORS",
    "Comparison",
    "Expression",
    "FilterSyntaxError",
    "Logical",
    "Negation",
    "PathSegment",
    "parse_filter",
]

#: R4 search_filter.html "Operations".
OPERATORS = frozenset(
    {"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le", "ap", "sa", "eb", "pr", "po", "ss", "sb", "in", "ni", "re"}
)
#: Deep enough for any hand-written filter, far from Python's recursion limit.
MAX_DEPTH = 32

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_TOKEN = re.compile(r"[^\s\])]+")


class FilterSyntaxError(ValueError):
    """A malformed filter; the message says where."""


@dataclass(frozen=True)
class PathSegment:
    name: str
    #: ``related[type eq has-component]``: a filter on the element the segment names.
    filter: Expression | None = None


@dataclass(frozen=True)
class Comparison:
    path: tuple[PathSegment, ...]
    operator: str
    value: str
    #: Whether the value was a quoted string (the quotes and escapes removed).
    quoted: bool = False

    @property
    def dotted(self) -> str:
        return ".".join(segment.name for segment in self.path)


@dataclass(frozen=True)
class Logical:
    operator: str  # "and" | "or"
    operands: tuple[Expression, ...]


@dataclass(frozen=True)
class Negation:
    operand: Expression


Expression = Comparison | Logical | Negation


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.depth = 0

    # -- lexical helpers -----------------------------------------------------------------------------

    def _space(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def _error(self, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"{message} at position {self.position + 1}")

    def _at_end(self) -> bool:
        self._space()
        return self.position >= len(self.text)

    def _peek_char(self) -> str:
        self._space()
        return self.text[self.position] if self.position < len(self.text) else ""

    def _keyword(self, word: str) -> bool:
        """Consume ``word`` if it comes next as a whole word (followed by space, "(" or the end)."""
        self._space()
        end = self.position + len(word)
        if self.text[self.position : end].lower() != word:
            return False
        if end < len(self.text) and not (self.text[end].isspace() or self.text[end] == "("):
            return False
        self.position = end
        return True

    def _expect(self, char: str) -> None:
        if self._peek_char() != char:
            found = repr(self.text[self.position]) if self.position < len(self.text) else "the end"
            raise self._error(f"expected {char!r}, found {found}")
        self.position += 1

    # -- grammar -------------------------------------------------------------------------------------

    def parse(self) -> Expression:
        if self._at_end():
            raise self._error("empty filter")
        expression = self._or()
        if not self._at_end():
            raise self._error(f"unexpected {self.text[self.position :]!r}")
        return expression

    def _or(self) -> Expression:
        operands = [self._and()]
        while self._keyword("or"):
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Logical("or", tuple(operands))

    def _and(self) -> Expression:
        operands = [self._unary()]
        while self._keyword("and"):
            operands.append(self._unary())
        return operands[0] if len(operands) == 1 else Logical("and", tuple(operands))

    def _unary(self) -> Expression:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._error(f"nested deeper than {MAX_DEPTH} levels")
        try:
            start = self.position
            if self._keyword("not"):
                if self._peek_char() == "(":
                    return Negation(self._group())
                self.position = start  # a parameter named "not..." (e.g. "note"): not the keyword
            if self._peek_char() == "(":
                return self._group()
            return self._comparison()
        finally:
            self.depth -= 1

    def _group(self) -> Expression:
        self._expect("(")
        inner = self._or()
        self._expect(")")
        return inner

    def _path(self) -> tuple[PathSegment, ...]:
        segments = []
        while True:
            self._space()
            match = _NAME.match(self.text, self.position)
            if match is None:
                raise self._error("expected a search parameter name")
            self.position = match.end()
            nested: Expression | None = None
            if self.position < len(self.text) and self.text[self.position] == "[":
                self.position += 1
                nested = self._or()
                self._expect("]")
            segments.append(PathSegment(match.group(), nested))
            if self.position < len(self.text) and self.text[self.position] == ".":
                self.position += 1
                continue
            return tuple(segments)

    def _comparison(self) -> Comparison:
        path = self._path()
        if self.position >= len(self.text) or not self.text[self.position].isspace():
            raise self._error("expected a space and an operator after the parameter name")
        self._space()
        match = _NAME.match(self.text, self.position)
        operator = match.group().lower() if match else ""
        if operator not in OPERATORS:
            raise self._error(f"unknown operator {operator or self.text[self.position : self.position + 1]!r}")
        self.position = match.end() if match else self.position
        if self.position >= len(self.text) or not self.text[self.position].isspace():
            raise self._error(f"expected a space and a value after {operator!r}")
        self._space()
        if self.position >= len(self.text):
            raise self._error(f"expected a value after {operator!r}")
        if self.text[self.position] == '"':
            string = _STRING.match(self.text, self.position)
            if string is None:
                raise self._error("unterminated string")
            try:
                value = json.loads(string.group())
            except ValueError:
                raise self._error("invalid escape in string") from None
            self.position = string.end()
            return Comparison(path, operator, value, quoted=True)
        token = _TOKEN.match(self.text, self.position)
        if token is None:
            raise self._error(f"expected a value after {operator!r}")
        self.position = token.end()
        return Comparison(path, operator, token.group())


def parse_filter(text: str) -> Expression:
    """The expression tree of ``text``; :class:`FilterSyntaxError` when it does not follow the grammar."""
    return _Parser(text).parse()
