"""Routing rules as data: a TOML file of series- and study-level rules.

A rules file is a list of ``[[rules]]`` tables::

    [[rules]]
    name = "dsa-head-quality"          # unique; jobs and explain name it
    level = "series"                   # "series": tested on each series; "study": once per study
    modules = ["quality"]              # installed module names (entry points)
    destinations = ["pacs"]            # optional; none = every configured destination
    description = "DSA runs of the head"

    [rules.match]                      # every condition must hold
    modality = "XA"
    number_of_frames = { min = 2 }

    [[rules.any]]                      # at least one condition of each [[rules.any]] must hold
    body_part_examined = { in = ["HEAD", "BRAIN"] }
    series_description = { regex = "cerebr|head" }

A study rule may also require series: each ``[[rules.requires]]`` needs at least one
series of the study that a named series rule matched (``rule = …``) and that meets
the other conditions of the table (``view = "LATERAL"``).  The conditions are those of
:mod:`dicomnode.routing.conditions` on the facts of :mod:`dicomnode.routing.facts`.

The shipped defaults (``defaults.toml``) apply when ``routing.rules_file`` is empty.
A user file replaces them, unless it starts with ``include_defaults = true``; then its
rules are added and a rule of the same name replaces the default one.  Defaults that
name a module that is not installed are kept without it (explain says so); a user rule
naming one is an error.  Every error is a :class:`~dicomnode.errors.ConfigError` with
the file, the line and the reason.
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError
from dicomnode.routing.conditions import Condition, ConditionError, parse_conditions
from dicomnode.routing.facts import SERIES_ATTRIBUTES, STUDY_ATTRIBUTES

LEVELS = ("series", "study")
_RULE_KEYS = {"name", "level", "modules", "destinations", "description", "enabled", "match",
              "any", "requires"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Requirement:
    """At least one series matched by ``rule`` (when given) that meets ``conditions``."""

    label: str
    rule: str | None
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Rule:
    """One routing rule (see the module docstring for the file format)."""

    name: str
    level: str
    modules: tuple[str, ...]
    destinations: tuple[str, ...] = ()
    description: str = ""
    match: tuple[Condition, ...] = ()
    any: tuple[tuple[Condition, ...], ...] = ()
    requires: tuple[Requirement, ...] = ()
    source: str = ""
    line: int = 0
    missing_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    """The effective rules, in file order, and the configured destinations."""

    rules: tuple[Rule, ...]
    destinations: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default_factory=tuple)

    def get(self, name: str) -> Rule:
        """The rule called ``name`` (KeyError if none)."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module some rule routes to."""
        return tuple(sorted({m for r in self.rules for m in r.modules}))


class _Lines:
    """Finds the line of a rule's key in the raw TOML text (tomllib reports none)."""

    _HEADER = re.compile(r"^\s*\[\[\s*rules\s*\]\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.starts = [i for i, line in enumerate(self.lines) if self._HEADER.match(line)]

    def find(self, rule: int, section: str | None = None, index: int = 0,
             key: str | None = None) -> int:
        """1-based line of ``key`` in rule ``rule`` (within its ``index``-th ``section``)."""
        if rule >= len(self.starts):
            return 0
        lo = self.starts[rule]
        hi = self.starts[rule + 1] if rule + 1 < len(self.starts) else len(self.lines)
        if section is not None:
            sub = re.compile(rf"^\s*\[\[?\s*rules\.{section}\s*\]\]?")
            heads = [i for i in range(lo, hi) if sub.match(self.lines[i])]
            if index < len(heads):
                lo = heads[index]
                nxt = [i for i in range(lo + 1, hi) if self.lines[i].lstrip().startswith("[")]
                hi = nxt[0] if nxt else hi
            else:
                inline = re.compile(rf"^\s*{section}\s*=")
                heads = [i for i in range(lo, hi) if inline.match(self.lines[i])]
                lo = heads[0] if heads else lo
        if key is not None:
            pat = re.compile(rf"(^|[\s{{,.]){re.escape(key)}\s*=")
            for i in range(lo, hi):
                if pat.search(self.lines[i]):
                    return i + 1
        return lo + 1


def _parse_group(spec: Any, known: Sequence[str], where: str) -> tuple[Condition, ...]:
    if not isinstance(spec, Mapping):
        raise ConditionError(f"{where}: expected a table of conditions")
    out: list[Condition] = []
    for attribute, value in spec.items():
        try:
            out.extend(parse_conditions(attribute, value, known))
        except ConditionError as exc:
            raise ConditionError(f"{where}.{exc}" if str(exc).startswith(attribute)
                                 else f"{where}: {exc}", attribute) from None
    return tuple(out)


def _parse_rule(raw: Any, index: int, lines: _Lines, source: str) -> Rule:
    header = lines.find(index)

    def error(msg: str, line: int = 0) -> ConfigError:
        name = raw.get("name") if isinstance(raw, Mapping) else None
        who = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
        return ConfigError(f"routing rules {source}, line {line or header}: {who}: {msg}")

    if not isinstance(raw, Mapping):
        raise error("expected a table")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise error(f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(_RULE_KEYS))})",
                    lines.find(index, key=unknown[0]))
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise error("name must be 1-64 letters, digits, '-', '_' or '.'", lines.find(index, key="name"))
    level = raw.get("level", "series")
    if level not in LEVELS:
        raise error(f"level must be 'series' or 'study', not {level!r}", lines.find(index, key="level"))
    modules = raw.get("modules")
    if (not isinstance(modules, list) or not modules
            or not all(isinstance(m, str) and m for m in modules)):
        raise error("modules must be a non-empty list of module names", lines.find(index, key="modules"))
    dests = raw.get("destinations", [])
    if not isinstance(dests, list) or not all(isinstance(d, str) for d in dests):
        raise error("destinations must be a list of destination names",
                    lines.find(index, key="destinations"))
    if not isinstance(raw.get("description", ""), str) or not isinstance(raw.get("enabled", True), bool):
        raise error("description must be a string and enabled true or false")
    known = SERIES_ATTRIBUTES if level == "series" else STUDY_ATTRIBUTES

    def group(spec: Any, section: str, i: int = 0) -> tuple[Condition, ...]:
        try:
            return _parse_group(spec, known if section != "requires" else SERIES_ATTRIBUTES,
                                section if section == "match" else f"{section}[{i}]")
        except ConditionError as exc:
            raise error(str(exc), lines.find(index, section, i, exc.attribute)) from None

    match = group(raw.get("match", {}), "match")
    anys = raw.get("any", [])
    if not isinstance(anys, list):
        raise error("any must be a list of tables ([[rules.any]])", lines.find(index, key="any"))
    any_groups = tuple(group(g, "any", i) for i, g in enumerate(anys))
    if any(not g for g in any_groups):
        raise error("an [[rules.any]] table needs at least one condition", lines.find(index, "any"))
    requires: list[Requirement] = []
    reqs = raw.get("requires", [])
    if reqs and level != "study":
        raise error("only study rules have [[rules.requires]]", lines.find(index, "requires"))
    if not isinstance(reqs, list):
        raise error("requires must be a list of tables ([[rules.requires]])")
    for i, req in enumerate(reqs):
        if not isinstance(req, Mapping):
            raise error("a [[rules.requires]] entry must be a table", lines.find(index, "requires", i))
        spec = dict(req)
        label, ref = spec.pop("label", f"requirement {i + 1}"), spec.pop("rule", None)
        if not isinstance(label, str) or not (ref is None or isinstance(ref, str)):
            raise error("requires: label and rule must be strings", lines.find(index, "requires", i))
        requires.append(Requirement(label, ref, group(spec, "requires", i)))
    return Rule(
        name=name, level=level, modules=tuple(modules), destinations=tuple(dests),
        description=raw.get("description", ""), match=match, any=any_groups,
        requires=tuple(requires), source=source, line=header,
    )


def parse_rules(text: str, source: str) -> tuple[list[Rule], bool, list[bool]]:
    """Rules of one TOML text; also its ``include_defaults`` flag and each rule's ``enabled``.

    Raises
    ------
    ConfigError
        TOML syntax errors (tomllib names the line) and every rule error above.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"routing rules {source}: {exc}") from None
    unknown = sorted(set(data) - {"rules", "include_defaults"})
    if unknown:
        raise ConfigError(f"routing rules {source}: unknown top-level key {unknown[0]!r} "
                          "(expected [[rules]] tables and include_defaults)")
    include = data.get("include_defaults", False)
    if not isinstance(include, bool):
        raise ConfigError(f"routing rules {source}: include_defaults must be true or false")
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"routing rules {source}: rules must be [[rules]] tables")
    lines = _Lines(text)
    rules = [_parse_rule(raw, i, lines, source) for i, raw in enumerate(raw_rules)]
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"routing rules {source}, line {rule.line}: rule {rule.name!r}: "
                              f"name already used on line {seen[rule.name].line}")
        seen[rule.name] = rule
    enabled = [raw.get("enabled", True) for raw in raw_rules]
    return rules, include, enabled


def default_rules_text() -> str:
    """The shipped ``defaults.toml``."""
    return resources.files("dicomnode.routing").joinpath("defaults.toml").read_text()


def load_rules(
    rules_file: Path | None,
    installed: Collection[str] | None = None,
    destinations: Collection[str] = (),
) -> RuleSet:
    """The effective rule set: defaults and/or the user file, checked.

    Parameters
    ----------
    rules_file : Path, optional
        ``routing.rules_file``; None for the shipped defaults only.
    installed : collection of str, optional
        Names of installed modules; None skips the module check (``route explain``
        of an index copied from elsewhere).
    destinations : collection of str
        Names of the configured destinations (rules may name only these).

    Raises
    ------
    ConfigError
        With the file, the line and the reason.
    """
    default_rules, _, default_enabled = parse_rules(default_rules_text(), "defaults.toml")
    defaults = [r for r, on in zip(default_rules, default_enabled, strict=True) if on]
    sources = ["defaults.toml"]
    user: list[Rule] = []
    include = True
    if rules_file is not None:
        path = Path(rules_file).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"routing.rules_file: cannot read {path}: {exc.strerror}") from None
        parsed, include, enabled = parse_rules(text, str(path))
        user = [r for r, on in zip(parsed, enabled, strict=True) if on]
        sources = ([*sources] if include else []) + [str(path)]
    names = {r.name for r in user}
    rules = ([r for r in defaults if r.name not in names] if include else []) + user

    checked: list[Rule] = []
    for rule in rules:
        where = f"routing rules {rule.source}, line {rule.line}: rule {rule.name!r}"
        for dest in rule.destinations:
            if dest not in destinations:
                known = ", ".join(destinations) or "none configured"
                raise ConfigError(f"{where}: unknown destination {dest!r} ([[destinations]]: {known})")
        missing = tuple(m for m in rule.modules if installed is not None and m not in installed)
        if missing and rule.source != "defaults.toml":
            raise ConfigError(f"{where}: module {missing[0]!r} is not installed "
                              f"(installed: {', '.join(sorted(installed or ())) or 'none'})")
        if missing:
            rule = replace(rule, modules=tuple(m for m in rule.modules if m not in missing),
                           missing_modules=missing)
        checked.append(rule)
    series_rules = {r.name for r in checked if r.level == "series"}
    for rule in checked:
        for req in rule.requires:
            if req.rule is not None and req.rule not in series_rules:
                raise ConfigError(f"routing rules {rule.source}, line {rule.line}: rule "
                                  f"{rule.name!r}: requires {req.label!r} names {req.rule!r}, "
                                  "which is not a series rule")
    return RuleSet(tuple(checked), tuple(destinations), tuple(sources))
