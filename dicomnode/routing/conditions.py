"""Match conditions of routing rules: parsed from TOML values, tested against facts.

A condition tests one attribute of a series (or of a study) as the index holds it
(see :mod:`dicomnode.routing.facts` for the names).  In a rules file an attribute
maps to a plain value (equality) or to a table of operators, all of which must hold::

    modality = "XA"                                    # equals (case-insensitive)
    image_type = { contains_any = ["SUBTRACTION", "DSA"] }
    number_of_frames = { min = 2 }                     # numeric range, inclusive
    body_part_examined = { in = ["HEAD", "BRAIN"] }
    series_description = { regex = "sag" }             # re.search, case-insensitive

Every test returns whether it held and the value it saw, so ``route explain`` can
say *why* a rule did not match, not only that it did not.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Operators a condition table may use, in the order the error message lists them.
OPERATORS = (
    "equals", "not_equals", "in", "not_in", "regex", "min", "max",
    "contains", "contains_any", "contains_none", "present",
)


class ConditionError(ValueError):
    """A condition in a rules file is malformed; the message says which part and why.

    ``attribute`` names the key it is about (so the rules loader can find its line).
    """

    def __init__(self, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


def _norm(value: Any) -> Any:
    """Strings compare case- and padding-insensitively (DICOM CS values are upper case)."""
    return value.strip().upper() if isinstance(value, str) else value


def _show(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "absent"
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class Condition:
    """One test on one attribute.

    Parameters
    ----------
    attribute : str
        Fact name (``modality``, ``image_type`` …).
    op : str
        One of :data:`OPERATORS`, or ``"range"`` for ``min``/``max`` together.
    value : Any
        The operand: a string, a number, a tuple of them, a compiled regex, or a
        ``(min, max)`` pair with None for an open end.
    """

    attribute: str
    op: str
    value: Any

    def describe(self) -> str:
        """The condition as a person reads it: ``image_type contains any of SUBTRACTION, DSA``."""
        a, v = self.attribute, self.value
        if self.op == "equals":
            return f"{a} = {_show(v)}"
        if self.op == "not_equals":
            return f"{a} != {_show(v)}"
        if self.op in ("in", "not_in"):
            word = "in" if self.op == "in" else "not in"
            return f"{a} {word} [{', '.join(str(x) if x != '' else 'absent' for x in v)}]"
        if self.op == "regex":
            return f"{a} ~ /{v.pattern}/"
        if self.op == "range":
            lo, hi = v
            if lo is not None and hi is not None:
                return f"{lo:g} <= {a} <= {hi:g}"
            return f"{a} >= {lo:g}" if lo is not None else f"{a} <= {hi:g}"
        if self.op == "present":
            return f"{a} present" if v else f"{a} absent"
        word = {"contains": "contains", "contains_any": "contains any of",
                "contains_none": "contains none of"}[self.op]
        return f"{a} {word} {', '.join(map(str, v))}"

    def test(self, facts: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether the condition holds for ``facts``, and the value seen (for explanations)."""
        actual = facts.get(self.attribute)
        seen = _show(actual)
        op, v = self.op, self.value
        if op == "present":
            has = actual not in (None, "", [], ())
            return has == v, seen
        if op in ("equals", "not_equals"):
            same = _norm(actual) == _norm(v) if not isinstance(v, float | int) else (
                _as_number(actual) == float(v))
            return same == (op == "equals"), seen
        if op in ("in", "not_in"):
            if isinstance(actual, list | tuple):
                return False, seen + " (multi-valued: use contains_any)"
            inside = _norm(actual if actual is not None else "") in {_norm(x) for x in v}
            return inside == (op == "in"), seen
        if op == "regex":
            text = "\\".join(map(str, actual)) if isinstance(actual, list | tuple) else (
                "" if actual is None else str(actual))
            return v.search(text) is not None, seen
        if op == "range":
            number = _as_number(actual)
            lo, hi = v
            if number is None:
                return False, seen
            return (lo is None or number >= lo) and (hi is None or number <= hi), seen
        # contains*: element membership for multi-valued attributes, substring otherwise.
        if isinstance(actual, list | tuple):
            have = {_norm(x) for x in actual}
            hits = [x for x in v if _norm(x) in have]
        else:
            text = _norm(actual or "")
            hits = [x for x in v if _norm(x) in text] if text else []
        if op == "contains":
            return len(hits) == len(v), seen
        if op == "contains_any":
            return bool(hits), seen
        return not hits, seen  # contains_none


def _strings(value: Any, what: str, allow_single: bool = True) -> tuple[Any, ...]:
    if allow_single and isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConditionError(f"{what} needs a non-empty list")
    for item in value:
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise ConditionError(f"{what}: {item!r} is not a string or number")
    return tuple(value)


def parse_conditions(attribute: str, spec: Any, known: Sequence[str]) -> list[Condition]:
    """The conditions one ``attribute = spec`` line of a rules file stands for.

    Raises
    ------
    ConditionError
        Unknown attribute, unknown operator, a bad regex, ``min`` > ``max`` or a value
        of the wrong type; the message names the part.
    """
    if attribute not in known:
        raise ConditionError(f"unknown attribute {attribute!r} (known: {', '.join(known)})", attribute)
    if isinstance(spec, str | int | float) and not isinstance(spec, bool):
        return [Condition(attribute, "equals", spec)]
    if not isinstance(spec, Mapping) or not spec:
        raise ConditionError(f"{attribute}: expected a value or a table of operators "
                             f"({', '.join(OPERATORS)})", attribute)
    out: list[Condition] = []
    for op, value in spec.items():
        where = f"{attribute}.{op}"
        if op not in OPERATORS:
            raise ConditionError(f"{where}: unknown operator (use {', '.join(OPERATORS)})", attribute)
        if op in ("equals", "not_equals"):
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ConditionError(f"{where}: expected a string or number", attribute)
            out.append(Condition(attribute, op, value))
        elif op in ("in", "not_in", "contains", "contains_any", "contains_none"):
            try:
                out.append(Condition(attribute, op, _strings(value, where)))
            except ConditionError as exc:
                raise ConditionError(str(exc), attribute) from None
        elif op == "regex":
            if not isinstance(value, str):
                raise ConditionError(f"{where}: expected a string", attribute)
            try:
                out.append(Condition(attribute, op, re.compile(value, re.IGNORECASE)))
            except re.error as exc:
                raise ConditionError(f"{where}: invalid regular expression: {exc}", attribute) from None
        elif op == "present":
            if not isinstance(value, bool):
                raise ConditionError(f"{where}: expected true or false", attribute)
            out.append(Condition(attribute, op, value))
    lo, hi = spec.get("min"), spec.get("max")
    for name, bound in (("min", lo), ("max", hi)):
        if name in spec and _as_number(bound) is None:
            raise ConditionError(f"{attribute}.{name}: expected a number", attribute)
    if lo is not None or hi is not None:
        if lo is not None and hi is not None and float(lo) > float(hi):
            raise ConditionError(f"{attribute}: min {lo} is greater than max {hi}", attribute)
        out.append(Condition(attribute, "range", (
            None if lo is None else float(lo), None if hi is None else float(hi))))
    return out
