"""Completion: when is a series, and then a study, done arriving — and routing it once.

States (kept in the index, flipped back by the receiver when data arrives)::

    Series  open ──(expected count reached, or series_quiet_seconds without data)──▶ complete
    Study   receiving ──(every series complete, no new series for study_quiet_seconds)──▶ complete
            complete ──(rules evaluated, jobs queued, generation + 1)──▶ routed

An instance that arrives later re-opens its series and study (``ingest``); the study
completes again and is routed with the next generation, so its jobs and results are
new ones and the earlier results are superseded, never mixed.

Every transition is a conditional ``UPDATE … WHERE state = … AND last_received_at = …``:
if the receiver touched the row after the sweep read it, the update matches nothing
and the sweep tries again next time (safe across processes and on PostgreSQL).  A
sweep with nothing pending costs two indexed queries (``series.state``, ``study.state``).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from dicomnode.config import RoutingSettings
from dicomnode.log import bind
from dicomnode.routing.facts import study_facts
from dicomnode.routing.router import Outcome, Route, plan
from dicomnode.routing.rules import RuleSet
from dicomnode.storage.db import Database
from dicomnode.storage.models import Event, Instance, Series, Study, utcnow

logger = logging.getLogger(__name__)


def _changed(session: Session, stmt: Any) -> int:
    """Rows an UPDATE matched (the conditional transitions test it)."""
    result = session.execute(stmt)
    return int(getattr(result, "rowcount", 0))

#: What the jobs layer does with a routed study: queue jobs in the routing transaction.
#: Called as ``enqueue(session, study, generation, routes)``; returns the new job ids.
Enqueue = Callable[[Session, Study, int, Sequence[Route]], list[int]]


class _Lost(Exception):
    """The study changed under the routing transaction; it is routed on a later sweep."""


@dataclass
class SweepReport:
    """What one sweep did (for logs, tests and the latency measurement)."""

    series_completed: int = 0
    studies_completed: list[str] = field(default_factory=list)
    studies_restored: list[str] = field(default_factory=list)
    routed: dict[str, list[int]] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """True when the sweep changed nothing."""
        return not (self.series_completed or self.studies_completed or self.studies_restored
                    or self.routed)


def complete_series(db: Database, timers: RoutingSettings, now: dt.datetime) -> int:
    """Mark open series complete by expected count or quiet period; returns how many."""
    with db.session() as s:
        rows = s.execute(select(Series.id, Series.last_received_at, Series.expected_instances)
                         .where(Series.state == "open")).all()
    if not rows:
        return 0
    quiet_before = now - dt.timedelta(seconds=timers.series_quiet_seconds)
    counted = [r.id for r in rows if r.expected_instances]
    counts: dict[int, int] = {}
    if counted:
        with db.session() as s:
            counts = dict(s.execute(select(Instance.series_fk, func.count(Instance.id))
                                    .where(Instance.series_fk.in_(counted))
                                    .group_by(Instance.series_fk)).all())
    due = [r for r in rows if r.last_received_at <= quiet_before
           or (r.expected_instances and counts.get(r.id, 0) >= r.expected_instances)]
    done = 0
    if due:
        with db.write() as s:
            for r in due:
                done += _changed(s,
                    update(Series).where(Series.id == r.id, Series.state == "open",
                                         Series.last_received_at == r.last_received_at)
                    .values(state="complete", completed_at=now))
    return done


def _inputs_changed_since(s: Session, study: Study, since: dt.datetime) -> bool:
    """Did an acquired (non-result) instance arrive after ``since``?"""
    return bool(s.scalar(select(exists().where(
        Instance.series_fk == Series.id, Series.study_fk == study.id,
        Series.is_result.is_(False), Instance.received_at > since))))


def complete_studies(
    db: Database, timers: RoutingSettings, now: dt.datetime, report: SweepReport
) -> None:
    """Mark receiving studies complete (or back to routed when only our results arrived)."""
    quiet_before = now - dt.timedelta(seconds=timers.study_quiet_seconds)
    with db.session() as s:
        studies = s.scalars(select(Study).where(Study.state == "receiving")).all()
        candidates = []
        for study in studies:
            if study.routed_at is not None and not _inputs_changed_since(s, study, study.routed_at):
                # Only the node's own result series arrived: nothing to route again.
                candidates.append((study, "routed"))
                continue
            open_series = s.scalar(select(func.count(Series.id)).where(
                Series.study_fk == study.id, Series.is_result.is_(False), Series.state == "open"))
            if open_series == 0 and study.last_series_added_at <= quiet_before:
                candidates.append((study, "complete"))
    if not candidates:
        return
    with db.write() as s:
        for study, target in candidates:
            values: dict[str, Any] = {"state": target}
            if target == "complete":
                values["completed_at"] = now
            changed = _changed(s, update(Study).where(
                Study.id == study.id, Study.state == "receiving",
                Study.last_received_at == study.last_received_at).values(**values))
            if changed and target == "complete":
                report.studies_completed.append(study.study_instance_uid)
            elif changed:
                report.studies_restored.append(study.study_instance_uid)


def route_study(
    db: Database, study_id: int, rules: RuleSet, enqueue: Enqueue, now: dt.datetime
) -> tuple[int, list[int], list[Outcome]] | None:
    """Route one complete study: evaluate rules, queue jobs, flip to routed, generation + 1.

    Returns (generation, job ids, outcomes), or None when the study was re-opened
    meanwhile (it is routed again once it completes again).
    """
    try:
        with db.write() as s:
            study = s.get(Study, study_id)
            if study is None or study.state != "complete":
                return None
            seen = study.last_received_at
            with bind(study=study.study_instance_uid):
                facts = study_facts(s, study)
                routes, outcomes = plan(rules, facts)
                generation = study.generation + 1
                job_ids = enqueue(s, study, generation, routes)
                flipped = _changed(s, update(Study).where(
                    Study.id == study_id, Study.state == "complete", Study.last_received_at == seen,
                ).values(state="routed", generation=generation, routed_at=now))
                if not flipped:
                    raise _Lost
                s.add(Event(kind="study-routed", study_instance_uid=study.study_instance_uid,
                            at=now, detail={
                                "generation": generation, "jobs": job_ids,
                                "rules": sorted({o.rule for o in outcomes if o.matched}),
                                "completed_at": study.completed_at.isoformat()
                                if study.completed_at else None}))
                logger.info("routed generation %d: %d job(s) from rule(s) %s", generation,
                            len(job_ids), ", ".join(sorted({r.rule for r in routes})) or "none")
            return generation, job_ids, outcomes
    except _Lost:
        return None


def awaiting_routing(db: Database) -> bool:
    """Whether a complete study waits to be routed (an indexed query on ``study.state``)."""
    with db.session() as s:
        return bool(s.scalar(select(exists().where(Study.state == "complete"))))


def sweep(
    db: Database, timers: RoutingSettings, rules: RuleSet, enqueue: Enqueue,
    now: dt.datetime | None = None, *, route: bool = True,
) -> SweepReport:
    """One pass: complete series, complete studies, route every complete study.

    ``route=False`` only completes (the node does not know its modules yet); the
    complete studies are routed by the first sweep that may route.
    """
    now = now or utcnow()
    report = SweepReport()
    report.series_completed = complete_series(db, timers, now)
    complete_studies(db, timers, now, report)
    if not route:
        return report
    with db.session() as s:
        due = s.execute(select(Study.id, Study.study_instance_uid)
                        .where(Study.state == "complete")).all()
    for study_id, uid in due:
        try:
            routed = route_study(db, study_id, rules, enqueue, utcnow())
        except Exception:
            # A bad study must not stop the sweep for the others; it stays `complete`
            # and is tried again on the next sweep.
            logger.exception("routing failed for study %s", uid)
            continue
        if routed is not None:
            report.routed[uid] = routed[1]
    return report
