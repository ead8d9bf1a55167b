"""Rules × facts → outcomes (matched, or why not) → routes (what to run on which series).

:func:`evaluate` is the one place rules are tested; routing (:func:`plan`) and
``dicomnode route explain`` (:mod:`dicomnode.routing.explain`) both read its
outcomes, so the explanation is always the reason the router acted as it did.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.routing.conditions import Condition
from dicomnode.routing.facts import SeriesFacts, StudyFacts
from dicomnode.routing.rules import Rule, RuleSet


@dataclass(frozen=True)
class Outcome:
    """One rule tested on one series (series rules) or on the study (study rules).

    ``series_instance_uid`` is empty for a study rule; ``series`` then lists the series
    that met its requirements (those a job will name).
    """

    rule: str
    level: str
    series_instance_uid: str
    matched: bool
    failures: tuple[str, ...] = ()
    series: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The outcome as ``route explain --json`` prints it."""
        return {"rule": self.rule, "level": self.level,
                "series_instance_uid": self.series_instance_uid or None,
                "matched": self.matched, "failed": list(self.failures),
                "series": list(self.series)}


@dataclass(frozen=True)
class Route:
    """What one matched rule asks for: modules on series, results to destinations."""

    rule: str
    level: str
    modules: tuple[str, ...]
    series_uids: tuple[str, ...]
    destinations: tuple[str, ...]


def _failed(cond: Condition, values: Mapping[str, Any]) -> str | None:
    ok, seen = cond.test(values)
    return None if ok else f"{cond.describe()} (was {seen})"


def _check(rule: Rule, values: Mapping[str, Any]) -> list[str]:
    """Failures of the ``match`` conditions and ``any`` groups on ``values``."""
    failures = [f for f in (_failed(c, values) for c in rule.match) if f]
    for group in rule.any:
        results = [(c, c.test(values)) for c in group]
        if not any(ok for _, (ok, _) in results):
            failures.append("none of: " + " | ".join(
                f"{c.describe()} (was {seen})" for c, (_, seen) in results))
    return failures


def evaluate(rules: RuleSet, facts: StudyFacts) -> list[Outcome]:
    """Every rule × series outcome (series rules), then one outcome per study rule."""
    outcomes: list[Outcome] = []
    matched_by: dict[str, list[SeriesFacts]] = {}
    for rule in rules.rules:
        if rule.level != "series":
            continue
        hits = matched_by.setdefault(rule.name, [])
        for series in facts.series:
            failures = _check(rule, series.values)
            if not failures:
                hits.append(series)
            outcomes.append(Outcome(rule.name, "series", series.series_instance_uid,
                                    not failures, tuple(failures), (series.series_instance_uid,)
                                    if not failures else ()))
    for rule in rules.rules:
        if rule.level != "study":
            continue
        failures = _check(rule, facts.values)
        chosen: list[str] = []
        for req in rule.requires:
            pool: Sequence[SeriesFacts] = (
                matched_by.get(req.rule, []) if req.rule is not None else facts.series)
            good = [s for s in pool if all(c.test(s.values)[0] for c in req.conditions)]
            if good:
                chosen.extend(s.series_instance_uid for s in good if s.series_instance_uid not in chosen)
                continue
            origin = f"series matched by {req.rule}" if req.rule else "series"
            if not pool:
                failures.append(f"requires {req.label}: no {origin}")
                continue
            seen = "; ".join(
                f"{s.label()}: " + ", ".join(f for f in (_failed(c, s.values) for c in req.conditions) if f)
                for s in pool)
            failures.append(f"requires {req.label}: none of {len(pool)} {origin} qualifies ({seen})")
        if not rule.requires:
            chosen = [s.series_instance_uid for s in facts.series]
        outcomes.append(Outcome(rule.name, "study", "", not failures, tuple(failures),
                                tuple(chosen) if not failures else ()))
    return outcomes


def plan(rules: RuleSet, facts: StudyFacts) -> tuple[list[Route], list[Outcome]]:
    """The routes of a complete study, and the outcomes they came from."""
    outcomes = evaluate(rules, facts)
    routes = []
    for outcome in outcomes:
        rule = rules.get(outcome.rule)
        if not outcome.matched or not rule.modules:
            continue
        routes.append(Route(rule.name, rule.level, rule.modules, outcome.series,
                            rule.destinations or rules.destinations))
    return routes, outcomes
