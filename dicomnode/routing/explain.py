"""``route explain``: which rule matched which series of a study, and why not.

The explanation is computed by :func:`dicomnode.routing.router.evaluate`, the same
function the router uses, on the study as the index holds it now.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from dicomnode.routing.facts import StudyFacts, study_facts
from dicomnode.routing.router import Outcome, evaluate
from dicomnode.routing.rules import RuleSet
from dicomnode.storage.db import Database
from dicomnode.storage.models import Study


@dataclass(frozen=True)
class Explanation:
    """A study's facts, every rule outcome, and the rule set's sources."""

    study_instance_uid: str
    state: str
    generation: int
    facts: StudyFacts
    outcomes: tuple[Outcome, ...]
    rules: RuleSet

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(rule, series, verdict, why) for a table, in rule order."""
        labels = {s.series_instance_uid: s.label() for s in self.facts.series}
        out = []
        for o in self.outcomes:
            rule = self.rules.get(o.rule)
            where = labels.get(o.series_instance_uid, o.series_instance_uid) if o.series_instance_uid \
                else "(study)"
            if o.matched and rule.modules:
                verdict = "match → " + ", ".join(rule.modules)
            elif o.matched:
                verdict = "match, module not installed: " + ", ".join(rule.missing_modules)
            else:
                verdict = "no"
            why = "; ".join(o.failures) if o.failures else (
                "series " + ", ".join(labels.get(u, u) for u in o.series) if o.level == "study" else "")
            out.append((o.rule, where, verdict, why))
        return out

    def as_json(self) -> dict[str, Any]:
        """Facts and outcomes as ``route explain --json`` prints them."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "state": self.state,
            "generation": self.generation,
            "rules_sources": list(self.rules.sources),
            "series": [{"series_instance_uid": s.series_instance_uid, **dict(s.values)}
                       for s in self.facts.series],
            "outcomes": [
                {**o.as_json(), "modules": list(self.rules.get(o.rule).modules),
                 "missing_modules": list(self.rules.get(o.rule).missing_modules)}
                for o in self.outcomes
            ],
        }


def explain_study(db: Database, study_instance_uid: str, rules: RuleSet) -> Explanation | None:
    """Evaluate ``rules`` on the indexed study; None when the index has no such study."""
    with db.session() as s:
        study = s.scalars(select(Study).where(
            Study.study_instance_uid == study_instance_uid)).first()
        if study is None:
            return None
        facts = study_facts(s, study)
        return Explanation(study.study_instance_uid, study.state, study.generation, facts,
                           tuple(evaluate(rules, facts)), rules)
