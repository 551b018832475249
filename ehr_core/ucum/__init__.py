"""UCUM canonical units: ``70 kg`` is ``70000 g``, ``5.4 mg/dL`` is ``54 g.m-3``.

R4 §3.1.1.5.8 (search.html#quantity): when the system is UCUM, a server "SHOULD" compare quantities in a
canonical form, so ``70000|http://unitsofmeasure.org|g`` finds an Observation of 70 kg. This module reads
the unit codes (the case-sensitive "c/s" codes) with the grammar of UCUM §1 to §9 (``mm[Hg]``, ``10*3/uL``,
``mL/min/{1.73_m2}``, ``kg/(m.s2)``) and reduces each to a factor over UCUM's base units (m, s, g, rad, K,
C, cd), driven by the definitions in ``ucum-essence.xml`` (UCUM 2.2, 2024-06-17, under the UCUM Copyright
Notice and License; the file beside this module, unchanged).

Where this departs from the letter of UCUM, it is to never equate what a clinician keeps apart:

- ``mol`` stays its own dimension (SI's amount of substance), not UCUM's pure number 6.02214076·10²³: a
  count per litre (``10*9/L``, white cells) never matches a concentration (``mmol/L``, glucose). Units
  defined from ``mol`` (``eq``, ``osm``, ``kat``, ``U``) convert with it; ``mg/dL`` and ``mmol/L`` never do
  (that needs the substance's molar mass).
- An arbitrary unit (UCUM §4.5, ``[IU]``, ``[arb'U]``...) is its own dimension: it converts only with
  itself under a prefix (``m[IU]/mL`` = ``[IU]/L``), never with another or with a count.
- Special units (UCUM §4.4): the affine temperature scales (``Cel``, ``[degF]``, ``[degRe]``) convert to
  kelvin when they are the whole unit; logarithmic ones (``[pH]``, ``B``, ``Np``...) and any special
  unit inside a larger term have no canonical form.
- Annotations (``{beats}``) are 1, as UCUM §6 says: they carry no meaning for conversion.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from functools import cache, lru_cache
from pathlib import Path

__all__ = ["UCUM", "Canonical", "canonical"]

#: The FHIR system of UCUM codes (R4 datatypes.html#Quantity).
UCUM = "http://unitsofmeasure.org"

_NS = "{http://unitsofmeasure.org/ucum-essence}"
_PRECISION = 40

#: Affine special units: kelvin = value * scale + offset (the scale is the function's ``value Unit`` in
#: the essence file; the offset, the scale's zero, is UCUM §4.4 table 18's function definition).
_OFFSETS = {"Cel": Decimal("273.15"), "degF": Decimal("459.67") * 5 / 9, "degRe": Decimal("273.15")}

#: Dimensions: base unit (or arbitrary unit, or mol) → exponent.
Dimensions = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Canonical:
    """A unit as ``factor`` (and ``offset``) over a product of base units, named by :attr:`unit`."""

    #: The canonical unit's code (``g.m-3``; ``1`` for a pure number).
    unit: str
    factor: Decimal
    offset: Decimal = Decimal(0)

    def value(self, number: float) -> float:
        """``number`` of this unit in the canonical unit (an infinite bound stays infinite), computed in
        decimal from the number's shortest text, so ``1000 mg`` is ``1 g`` exactly, not ``1.0000000000000002``."""
        if not math.isfinite(number):
            return number
        return _convert(self.factor, self.offset, number)


_CONTEXT = Context(prec=_PRECISION)


@lru_cache(maxsize=1 << 16)
def _convert(factor: Decimal, offset: Decimal, number: float) -> float:
    """(Cached: an index batch converts the same values again and again, each composite's too.)"""
    return float(_CONTEXT.add(_CONTEXT.multiply(Decimal(repr(number)), factor), offset))


@dataclass(frozen=True)
class _Term:
    factor: Decimal
    dimensions: Dimensions

    def times(self, other: _Term, power: int = 1) -> _Term:
        found = dict(self.dimensions)
        for base, exponent in other.dimensions:
            found[base] = found.get(base, 0) + exponent * power
        with localcontext(prec=_PRECISION):
            factor = self.factor * other.factor**power
        return _Term(factor, tuple(sorted((b, e) for b, e in found.items() if e)))

    def power(self, exponent: int) -> _Term:
        return _ONE.times(self, exponent)


_ONE = _Term(Decimal(1), ())


@dataclass(frozen=True)
class _Atom:
    code: str
    metric: bool
    #: None for a base unit, mol or an arbitrary unit at its root (each its own dimension).
    definition: tuple[str, Decimal] | None
    #: Special units (UCUM §4.4): the function's name, value and unit.
    function: tuple[str, Decimal, str] | None = None


class _Essence:
    """The atoms and prefixes of ``ucum-essence.xml``."""

    def __init__(self, path: Path) -> None:
        root = ElementTree.parse(path).getroot()
        self.prefixes: dict[str, Decimal] = {}
        self.atoms: dict[str, _Atom] = {}
        for element in root:
            code = element.get("Code", "")
            value = element.find(f"{_NS}value")
            if element.tag == f"{_NS}prefix" and value is not None:
                self.prefixes[code] = Decimal(value.get("value", "1"))
            elif element.tag == f"{_NS}base-unit":
                self.atoms[code] = _Atom(code, True, None)
            elif element.tag == f"{_NS}unit" and value is not None:
                metric = element.get("isMetric") == "yes"
                function = value.find(f"{_NS}function")
                if function is not None:
                    name = function.get("name", "")
                    self.atoms[code] = _Atom(
                        code, metric, None, (name, Decimal(function.get("value", "1")), function.get("Unit", "1"))
                    )
                elif code == "mol" or (element.get("isArbitrary") == "yes" and value.get("Unit") == "1"):
                    self.atoms[code] = _Atom(code, metric, None)
                else:
                    self.atoms[code] = _Atom(code, metric, (value.get("Unit", "1"), Decimal(value.get("value", "1"))))
        #: Longest first, so ``da`` (deka) is tried before ``d`` (deci).
        self.prefix_order = sorted(self.prefixes, key=len, reverse=True)


_ESSENCE = _Essence(Path(__file__).with_name("ucum-essence.xml"))

_EXPONENT = re.compile(r"^(.*?)([+-]?\d+)$")


class _Invalid(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    """Operators, parentheses, annotations and symbols (a ``[...]`` part kept whole: ``[m/s2/Hz^(1/2)]``)."""
    tokens: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "[":
            end = text.find("]", index)
            if end < 0:
                raise _Invalid(text)
            current.append(text[index : end + 1])
            index = end + 1
            continue
        if char == "{":
            end = text.find("}", index)
            if end < 0:
                raise _Invalid(text)
            if current:
                tokens.append("".join(current))
                current = []
            tokens.append(text[index : end + 1])
            index = end + 1
            continue
        if char in "./()":
            if current:
                tokens.append("".join(current))
                current = []
            tokens.append(char)
        elif char.isspace():
            raise _Invalid(text)
        else:
            current.append(char)
        index += 1
    if current:
        tokens.append("".join(current))
    return tokens


class _Parser:
    """UCUM §2's term grammar: ``term = ['/'] component (('.' | '/') component)*``."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0

    def parse(self) -> _Term:
        term = self._term()
        if self.position != len(self.tokens):
            raise _Invalid("trailing text")
        return term

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> str:
        token = self._peek()
        if token is None:
            raise _Invalid("unexpected end")
        self.position += 1
        return token

    def _term(self) -> _Term:
        if self._peek() == "/":
            self._next()
            term = _ONE.times(self._component(), -1)
        else:
            term = self._component()
        while self._peek() in (".", "/"):
            operator = self._next()
            term = term.times(self._component(), 1 if operator == "." else -1)
        return term

    def _component(self) -> _Term:
        token = self._next()
        if token == "(":
            inner = self._term()
            if self._next() != ")":
                raise _Invalid("unbalanced parentheses")
            self._annotation()
            return inner
        if token.startswith("{"):
            return _ONE  # an annotation alone is the unity (UCUM §6)
        if token in ("/", ".", ")"):
            raise _Invalid(f"unexpected {token!r}")
        self._annotation()
        return _symbol(token)

    def _annotation(self) -> None:
        token = self._peek()
        if token is not None and token.startswith("{"):
            self._next()


def _symbol(token: str) -> _Term:
    """A simple unit with its exponent (``cm2``, ``10*-3``, ``mm[Hg]``), or a factor (``4``)."""
    if token.isdigit():
        return _Term(Decimal(token), ())
    found = _EXPONENT.match(token)
    if found and found.group(1):
        return _unit(found.group(1)).power(int(found.group(2)))
    return _unit(token)


def _unit(symbol: str) -> _Term:
    atom = _ESSENCE.atoms.get(symbol)
    if atom is not None:
        return _atom(atom.code)
    for prefix in _ESSENCE.prefix_order:
        if symbol.startswith(prefix):
            atom = _ESSENCE.atoms.get(symbol[len(prefix) :])
            if atom is not None and atom.metric:
                base = _atom(atom.code)
                return _Term(base.factor * _ESSENCE.prefixes[prefix], base.dimensions)
    raise _Invalid(f"unknown unit {symbol!r}")


@cache
def _atom(code: str) -> _Term:
    atom = _ESSENCE.atoms[code]
    if atom.function is not None:
        raise _Invalid(f"special unit {code!r} inside a term")
    if atom.definition is None:
        return _Term(Decimal(1), ((code, 1),))
    unit, value = atom.definition
    inner = _Parser(unit).parse()
    with localcontext(prec=_PRECISION):
        return _Term(inner.factor * value, inner.dimensions)


def _name(dimensions: Dimensions) -> str:
    return ".".join(base if exponent == 1 else f"{base}{exponent}" for base, exponent in dimensions) or "1"


@cache
def canonical(code: str) -> Canonical | None:
    """The canonical form of the UCUM code ``code``; None when it is not a UCUM code this module can
    reduce (malformed, unknown, or a special unit other than an affine temperature scale)."""
    special = _ESSENCE.atoms.get(code)
    if special is not None and special.function is not None:
        name, scale, unit = special.function
        if name not in _OFFSETS:
            return None
        try:
            term = _Parser(unit).parse()
        except _Invalid:
            return None
        with localcontext(prec=_PRECISION):
            return Canonical(_name(term.dimensions), scale * term.factor, _OFFSETS[name])
    if not code:
        return None
    try:
        found = _Parser(code).parse()
    except (_Invalid, RecursionError):
        return None
    return Canonical(_name(found.dimensions), found.factor)
