"""Job rows: creation from routes, claims with leases, retries with backoff, dependencies.

States::

    waiting ──(the jobs it depends on are finished)──▶ queued
    queued ──(claimed by a worker: lease, attempts + 1)──▶ running
    running ──▶ done | failed | retry_wait ──(backoff elapsed)──▶ queued
    any unfinished ──(operator, or superseded by a newer generation)──▶ cancelled

A claim is a conditional ``UPDATE … WHERE state = 'queued'`` preceded, on
PostgreSQL, by ``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent workers never block
on (or take) the same row; on SQLite the database's single writer serialises claims.
A running job holds a lease (``lease_owner`` = ``host:pid:token``, ``lease_expires_at``)
that its worker renews; every later transition checks the token, so a worker that
lost its lease (crash, cancel, expiry) can no longer finish the job.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomnode.routing.router import Route
from dicomnode.storage.db import Database
from dicomnode.storage.models import Event, Job, Study, utcnow

logger = logging.getLogger(__name__)


def _changed(session: Session, stmt: Any) -> int:
    """Rows an UPDATE matched (the conditional transitions test it)."""
    result = session.execute(stmt)
    return int(getattr(result, "rowcount", 0))

WAITING, QUEUED, RUNNING = "waiting", "queued", "running"
DONE, FAILED, RETRY_WAIT, CANCELLED = "done", "failed", "retry_wait", "cancelled"
STATES = (WAITING, QUEUED, RUNNING, RETRY_WAIT, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
UNFINISHED = (WAITING, QUEUED, RUNNING, RETRY_WAIT)

@dataclass(frozen=True)
class ModuleInfo:
    """What routing needs to know of a module: its job granularity and dependencies."""

    name: str
    level: str = "series"
    depends_on: tuple[str, ...] = ()

@dataclass(frozen=True)
class Claim:
    """A job a worker now holds: its id, lease token and what the log lines name."""

    job_id: int
    token: str
    study_instance_uid: str
    module: str
    attempt: int

def lease_token() -> str:
    """``host:pid:random``: the host and pid let a restarted node spot its dead leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

def idempotency_key(study_uid: str, module: str, generation: int, series: Sequence[str]) -> str:
    """sha256 of what a job is: the same study, module, generation and inputs → same key."""
    text = "|".join([study_uid, module, str(generation), ",".join(sorted(series))])
    return hashlib.sha256(text.encode()).hexdigest()

def backoff(schedule: Sequence[float], attempts: int) -> float:
    """Wait after the ``attempts``-th failure: ``schedule[attempts-1]``, capped at the last."""
    if not schedule:
        return 60.0
    return float(schedule[min(max(attempts, 1), len(schedule)) - 1])

# ---------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------

def enqueue_routes(
    session: Session, study: Study, generation: int, routes: Sequence[Route],
    modules: Mapping[str, ModuleInfo], max_attempts: int, now: dt.datetime | None = None,
) -> list[int]:
    """Create the jobs of one routing (inside the routing transaction); returns their ids.

    A series-level module gets one job per series, a study-level module one job per
    study with every series its rules chose.  A module that depends on another one
    routed here waits for it.  Unfinished jobs of earlier generations are cancelled:
    their inputs changed, and their results would be superseded anyway.
    """
    now = now or utcnow()
    planned: dict[tuple[str, tuple[str, ...]], dict[str, list[str]]] = {}
    for route in routes:
        for name in route.modules:
            info = modules.get(name, ModuleInfo(name))
            groups = ([tuple(route.series_uids)] if info.level == "study"
                      else [(uid,) for uid in route.series_uids])
            for group in groups:
                key = (name, () if info.level == "study" else group)
                entry = planned.setdefault(key, {"series": [], "rules": [], "destinations": []})
                for items, new in ((entry["series"], group), (entry["rules"], (route.rule,)),
                                   (entry["destinations"], route.destinations)):
                    items.extend(x for x in new if x not in items)
    routed_modules = {name for name, _ in planned}

    stale = _changed(session,
        update(Job).where(Job.study_instance_uid == study.study_instance_uid,
                          Job.generation < generation, Job.state.in_((WAITING, QUEUED, RETRY_WAIT)))
        .values(state=CANCELLED, finished_at=now, lease_owner="",
                reason=f"superseded by generation {generation} (new data arrived)"))
    if stale:
        logger.info("cancelled %d unfinished job(s) of earlier generations", stale)

    ids = []
    for (name, _), entry in sorted(planned.items()):
        deps = [d for d in modules.get(name, ModuleInfo(name)).depends_on if d in routed_modules]
        series = sorted(entry["series"])
        ikey = idempotency_key(study.study_instance_uid, name, generation, series)
        values = dict(
            idempotency_key=ikey, study_instance_uid=study.study_instance_uid, module=name,
            series_uids=series, rule=",".join(entry["rules"])[:128],
            destinations=entry["destinations"], generation=generation,
            state=WAITING if deps else QUEUED, attempts=0, max_attempts=max_attempts,
            created_at=now, summary={"depends_on": deps} if deps else {},
        )
        dialect = session.get_bind().dialect.name
        insert = (postgresql.insert(Job) if dialect == "postgresql" else sqlite.insert(Job))
        session.execute(insert.values(**values).on_conflict_do_nothing())
        job_id = session.scalar(select(Job.id).where(Job.idempotency_key == ikey))
        assert job_id is not None
        ids.append(job_id)
        logger.info("job %d: %s on %d series (%s)%s", job_id, name, len(series), values["rule"],
                    f", waits for {', '.join(deps)}" if deps else "")
    return ids

# ---------------------------------------------------------------------------
# Claims and leases
# ---------------------------------------------------------------------------

def claim(db: Database, lease_seconds: float, token: str | None = None,
          now: dt.datetime | None = None) -> Claim | None:
    """Take the oldest queued job whose study is not receiving again; None if there is none."""
    now = now or utcnow()
    token = token or lease_token()
    receiving = exists().where(Study.study_instance_uid == Job.study_instance_uid,
                               Study.state == "receiving")
    stmt = select(Job.id).where(Job.state == QUEUED, ~receiving).order_by(Job.id).limit(1)
    if not db.is_sqlite:
        stmt = stmt.with_for_update(of=Job, skip_locked=True)
    for _ in range(5):  # another worker may win the row between our select and update
        with db.write() as s:
            job_id = s.scalar(stmt)
            if job_id is None:
                return None
            won = _changed(s, update(Job).where(Job.id == job_id, Job.state == QUEUED).values(
                state=RUNNING, attempts=Job.attempts + 1, started_at=now, next_attempt_at=None,
                lease_owner=token, lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            ))
            if won:
                job = s.get(Job, job_id)
                assert job is not None
                return Claim(job_id, token, job.study_instance_uid, job.module, job.attempts)
    return None

def renew(db: Database, job_id: int, token: str, lease_seconds: float) -> bool:
    """Extend a running job's lease; False when the lease is lost (cancelled, expired, taken)."""
    with db.write() as s:
        return bool(_changed(s, update(Job).where(
            Job.id == job_id, Job.state == RUNNING, Job.lease_owner == token,
        ).values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))))

def has_work(db: Database) -> bool:
    """Whether any job is unfinished (so worker processes are needed)."""
    with db.session() as s:
        return bool(s.scalar(select(exists().where(Job.state.in_(UNFINISHED)))))


def holds(db: Database, job_id: int, token: str) -> bool:
    """Whether the job is still running under ``token`` (a read; cheap enough every second)."""
    with db.session() as s:
        return bool(s.scalar(select(exists().where(
            Job.id == job_id, Job.state == RUNNING, Job.lease_owner == token))))


def state_of(db: Database, job_id: int) -> str | None:
    """The job's state (None when there is no such job)."""
    with db.session() as s:
        return s.scalar(select(Job.state).where(Job.id == job_id))


def finish_done(session: Session, job_id: int, token: str, *, reason: str = "",
                summary: Mapping[str, Any] | None = None,
                timings: Mapping[str, Any] | None = None, model_version: str = "") -> bool:
    """Mark the job done in ``session`` (the runner's results transaction) if still ours."""
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None or job.state != RUNNING or job.lease_owner != token:
        return False
    merged = {**(job.summary or {}), **(summary or {})}
    changed = _changed(session, update(Job).where(
        Job.id == job_id, Job.state == RUNNING, Job.lease_owner == token,
    ).values(state=DONE, finished_at=now, lease_owner="", lease_expires_at=None, error="",
             reason=reason, summary=merged, timings=dict(timings or {}),
             model_version=model_version or job.model_version))
    if changed:
        release_dependents(session, job.study_instance_uid, job.generation)
    return bool(changed)

def finish_failed(db: Database, job_id: int, token: str, error: str,
                  schedule: Sequence[float], timings: Mapping[str, Any] | None = None) -> str | None:
    """Record a failed attempt: ``retry_wait`` with backoff, or ``failed`` after the last.

    Returns the new state, or None when the job was no longer ours.
    """
    now = utcnow()
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != RUNNING or job.lease_owner != token:
            return None
        last = job.attempts >= job.max_attempts
        state = FAILED if last else RETRY_WAIT
        wait = backoff(schedule, job.attempts)
        s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == token).values(
            state=state, error=error[:4000], lease_owner="", lease_expires_at=None,
            finished_at=now if last else None,
            next_attempt_at=None if last else now + dt.timedelta(seconds=wait),
            timings={**(job.timings or {}), **(timings or {})}))
        if last:
            release_dependents(s, job.study_instance_uid, job.generation)
    if last:
        logger.error("job %d failed after %d attempt(s): %s", job_id, job.attempts, error)
    else:
        logger.warning("job %d attempt %d/%d failed: %s; retry in %g s", job_id, job.attempts,
                       job.max_attempts, error, wait)
    return state

def requeue(db: Database, job_id: int, token: str, reason: str) -> bool:
    """Give a running job back to the queue without counting the attempt (node shutdown)."""
    with db.write() as s:
        return bool(_changed(s, update(Job).where(
            Job.id == job_id, Job.state == RUNNING, Job.lease_owner == token,
        ).values(state=QUEUED, attempts=Job.attempts - 1, lease_owner="", lease_expires_at=None,
                 reason=reason)))

def _owner_dead(owner: str, host: str) -> bool:
    """True when ``owner`` (``host:pid:token``) names a process of this host that is gone."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

def recover_interrupted(db: Database, now: dt.datetime | None = None, *,
                        all_local: bool = False) -> list[int]:
    """Queue again the running jobs whose worker is gone: lease expired, or its node died.

    ``all_local`` (start-up) also takes running jobs of this host whose owner process
    no longer exists, without waiting for the lease to expire.  An interrupted attempt
    counts; after the last one the job fails with the reason.
    """
    now = now or utcnow()
    host = socket.gethostname()
    with db.session() as s:
        rows = s.execute(select(Job.id, Job.lease_owner, Job.lease_expires_at)
                         .where(Job.state == RUNNING)).all()
    stale = [r for r in rows if (r.lease_expires_at is not None and r.lease_expires_at < now)
             or (all_local and _owner_dead(r.lease_owner, host))
             or (r.lease_owner == "")]
    out = []
    for r in stale:
        with db.write() as s:
            job = s.get(Job, r.id)
            if job is None or job.state != RUNNING or job.lease_owner != r.lease_owner:
                continue
            why = (f"interrupted: worker {r.lease_owner or '?'} ended during attempt "
                   f"{job.attempts}")
            last = job.attempts >= job.max_attempts
            s.execute(update(Job).where(Job.id == r.id, Job.lease_owner == r.lease_owner).values(
                state=FAILED if last else QUEUED, error=why, lease_owner="", lease_expires_at=None,
                finished_at=now if last else None))
            # The error is cleared when a later attempt succeeds; the audit trail keeps it.
            s.add(Event(kind="job-interrupted", study_instance_uid=job.study_instance_uid, at=now,
                        detail={"job": job.id, "module": job.module, "attempt": job.attempts,
                                "reason": why, "then": "failed" if last else "queued"}))
            if last:
                release_dependents(s, job.study_instance_uid, job.generation)
        logger.warning("job %d %s: %s", r.id, "failed" if last else "queued again", why)
        out.append(r.id)
    return out

def wake_retries(db: Database, now: dt.datetime | None = None) -> int:
    """Move ``retry_wait`` jobs whose backoff has elapsed back to ``queued``."""
    now = now or utcnow()
    with db.session() as s:
        due = s.scalar(select(exists().where(Job.state == RETRY_WAIT, Job.next_attempt_at <= now)))
    if not due:
        return 0
    with db.write() as s:
        return _changed(s, update(Job).where(Job.state == RETRY_WAIT, Job.next_attempt_at <= now)
                         .values(state=QUEUED, next_attempt_at=None))

def release_dependents(session: Session, study_uid: str, generation: int) -> list[int]:
    """Queue the waiting jobs of (study, generation) whose dependencies have all finished."""
    waiting = session.scalars(select(Job).where(
        Job.study_instance_uid == study_uid, Job.generation == generation, Job.state == WAITING)).all()
    released = []
    for job in waiting:
        deps = list((job.summary or {}).get("depends_on", []))
        busy = session.scalar(select(exists().where(
            Job.study_instance_uid == study_uid, Job.generation == generation,
            Job.module.in_(deps), Job.state.in_(UNFINISHED)))) if deps else False
        if not busy:
            session.execute(update(Job).where(Job.id == job.id, Job.state == WAITING)
                            .values(state=QUEUED))
            released.append(job.id)
            logger.info("job %d (%s) released: %s finished", job.id, job.module, ", ".join(deps))
    return released

def release_all_waiting(db: Database) -> int:
    """Safety net of the timed tick: release waiting jobs whose dependencies are finished."""
    with db.session() as s:
        keys = s.execute(select(Job.study_instance_uid, Job.generation)
                         .where(Job.state == WAITING).distinct()).all()
    n = 0
    for study_uid, generation in keys:
        with db.write() as s:
            n += len(release_dependents(s, study_uid, generation))
    return n

# ---------------------------------------------------------------------------
# Operator actions
# ---------------------------------------------------------------------------

class JobStateError(Exception):
    """The operator action does not apply to the job's state (the message says why)."""

def cancel(db: Database, job_id: int, reason: str = "cancelled by operator") -> Job:
    """Cancel an unfinished job; a running one loses its lease and its worker stops it."""
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state in FINISHED:
            raise JobStateError(f"job {job_id} is already {job.state}")
        job.state, job.reason, job.finished_at = CANCELLED, reason, utcnow()
        job.lease_owner, job.lease_expires_at = "", None
        s.flush()
        release_dependents(s, job.study_instance_uid, job.generation)
        return job

def retry(db: Database, job_id: int, *, force: bool = False) -> Job:
    """Queue a failed, cancelled or waiting-to-retry job now (``force``: a done one too).

    The attempt counter starts again, so the job gets its full ``max_attempts``.
    """
    with db.write() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        allowed = {FAILED, CANCELLED, RETRY_WAIT} | ({DONE} if force else set())
        if job.state not in allowed:
            hint = " (use --force to run a done job again)" if job.state == DONE else ""
            raise JobStateError(f"job {job_id} is {job.state}{hint}")
        job.state, job.attempts, job.error, job.reason = QUEUED, 0, "", ""
        job.next_attempt_at = job.finished_at = None
        return job

def job_json(job: Job) -> dict[str, Any]:
    """One job as ``jobs list --json`` and ``jobs show --json`` print it."""
    return {
        "id": job.id, "study": job.study_instance_uid, "module": job.module, "state": job.state,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "error": job.error,
        "reason": job.reason, "generation": job.generation, "rule": job.rule,
        "series": list(job.series_uids or []), "destinations": list(job.destinations or []),
        "model_version": job.model_version,
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "next_attempt_at": job.next_attempt_at,
        "lease_owner": job.lease_owner, "lease_expires_at": job.lease_expires_at,
    }

def list_jobs(db: Database, *, state: str | None = None, study: str | None = None,
              module: str | None = None, limit: int = 100) -> list[Job]:
    """Jobs, newest first, filtered by state, study and module."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    conds = [c for c in (Job.state == state if state else None,
                         Job.study_instance_uid == study if study else None,
                         Job.module == module if module else None) if c is not None]
    if conds:
        stmt = stmt.where(and_(*conds))
    with db.session() as s:
        return list(s.scalars(stmt))
