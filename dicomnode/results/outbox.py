"""The outbox: C-STORE every pending Delivery, retry with capped backoff, survive restarts.

All state is in the ``delivery`` table, so a restarted node simply carries on:

``pending`` → (C-STORE 0x0000, or warning 0xB000/0xB006/0xB007) → ``delivered``
``pending`` → (other status, association or network failure) → ``pending`` with
``attempts + 1`` and ``next_attempt_at = now + backoff[attempts - 1]`` (the list
``delivery.retry_backoff_seconds``, its last value repeated), or ``failed`` once
``delivery.max_attempts`` (0 = never) is reached.

``failed`` is shown in ``dicomnode status`` but never dropped.  A row that failed
because its destination could not be reached keeps a ``next_attempt_at`` (the
capped backoff): when that time comes, or when a newer row for the same
destination is due, the failed rows go back to ``pending`` ahead of it, so a PACS
that is down for longer than the retry cap still gets everything, in order, once
it answers.  A row the PACS itself refused (a failure status) stays ``failed``
until an operator sends it again (:func:`requeue_failed`, or re-running the job:
:func:`~dicomnode.results.store.store_results` re-arms its failed rows).

:func:`deliver_due` (the scheduler calls it every few seconds) takes the due rows in
creation order, groups them by destination, and sends each group over one
association.  It first *claims* the rows (``next_attempt_at`` moved a lease ahead,
``claimed_by`` = ``host:pid:random``) in its own transaction, so two overlapping
calls or two nodes never send the same row.  A node killed mid-send leaves its
claims behind: the next call on that host sees the owner process is gone and
sends them at once (another host's claims wait for the lease).  The PACS may then
get an object it already stored but whose answer never arrived: it is the same
object with the same SOP Instance UID (results.md, Identity), never a second one.

Every attempt leaves an audit ``Event`` (``delivered``, ``delivery-retry``,
``delivery-failed``; one ``delivery-unreachable`` per association that could not
be made): what was sent, to which destination and AE, when, and the outcome.

Order per destination is kept across outages: when the association cannot be
made, every row of that destination waits for the same next attempt, so a PACS
that comes back gets everything in the order it was produced.  A single object
the PACS refuses (say 0xA700), or whose C-STORE it answers by aborting the
association, is retried on its own schedule without holding back the others (the
objects behind it, never sent, go on a new association at once).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from dicomnode.config import Destination, Settings
from dicomnode.log import bind
from dicomnode.net import status as st
from dicomnode.net.scu import AssociationFailed, Link, StoreOutcome, send_files
from dicomnode.results.store import DELIVERED, FAILED, PENDING
from dicomnode.storage.db import Database
from dicomnode.storage.models import Delivery, Event, Result, utcnow

logger = logging.getLogger(__name__)

#: How long a claimed row stays invisible to other senders (a crash delays it this much).
CLAIM_SECONDS = 300.0
#: Rows sent per association at most; the rest waits for the next call.
BATCH = 500
#: How :func:`~dicomnode.net.scu.send_files` says an object's turn never came.
NEVER_SENT = "association lost before sending"


@dataclass
class DeliveryReport:
    """What one :func:`deliver_due` call did."""

    delivered: int = 0
    warnings: int = 0
    retrying: int = 0
    failed: int = 0
    by_destination: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, destination: str, key: str) -> None:
        """Add one to ``key`` overall and for ``destination``."""
        setattr(self, key, getattr(self, key) + 1)
        per = self.by_destination.setdefault(destination, {})
        per[key] = per.get(key, 0) + 1


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Delay after the ``attempts``-th failed attempt (1-based), capped at the last value."""
    schedule = settings.delivery.retry_backoff_seconds or [60.0]
    return float(schedule[min(max(attempts, 1), len(schedule)) - 1])


@dataclass(frozen=True)
class _Due:
    delivery_id: int
    destination: str
    path: str
    sop_instance_uid: str
    kind: str
    attempts: int
    study_instance_uid: str = ""
    sop_class_uid: str = ""
    job_id: int | None = None


def claim_token() -> str:
    """``host:pid:random``: the host and pid let a restarted node spot its dead claims."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _owner_dead(owner: str, host: str) -> bool:
    """True when ``owner`` (``host:pid:random``) names a process of this host that is gone."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def release_dead_claims(db: Database, now: dt.datetime | None = None) -> int:
    """Make due again the pending rows claimed by a process of this host that is gone.

    A node killed with SIGKILL mid-send cannot give its claims back; without this its
    rows would wait for the whole lease (:data:`CLAIM_SECONDS`).  Returns the count.
    """
    now = now or utcnow()
    host = socket.gethostname()
    with db.session() as session:  # a read first: the usual answer is "none"
        held = session.execute(select(Delivery.id, Delivery.claimed_by).where(
            Delivery.state == PENDING, Delivery.claimed_by != "")).all()
    dead = [(i, owner) for i, owner in held if _owner_dead(owner, host)]
    if not dead:
        return 0
    released = 0
    with db.write() as session:
        for delivery_id, owner in dead:
            released += int(getattr(session.execute(
                update(Delivery).where(Delivery.id == delivery_id, Delivery.claimed_by == owner,
                                       Delivery.state == PENDING)
                .values(claimed_by="", next_attempt_at=now)), "rowcount", 0))
    if released:
        logger.warning("%d deliveries claimed by a sender that died mid-send are due again "
                       "(the destination may get some of them a second time, same SOP Instance UIDs)",
                       released)
    return released


def _revive_exhausted(db: Database, now: dt.datetime) -> int:
    """Put failed-but-waiting rows back in the queue when their destination is tried again.

    They go back when their own next attempt (the capped backoff) is due, or as soon
    as a newer row for the same destination is due: sending the newer one first would
    break the destination's order.
    """
    waiting = and_(Delivery.state == FAILED, Delivery.next_attempt_at.is_not(None))
    with db.session() as session:
        names = set(session.scalars(select(Delivery.destination).where(waiting).distinct()))
        if not names:
            return 0
        due = set(session.scalars(select(Delivery.destination).where(
            Delivery.destination.in_(names),
            or_(and_(waiting, Delivery.next_attempt_at <= now),
                and_(Delivery.state == PENDING, Delivery.claimed_by == "",
                     or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)))
        ).distinct()))
    if not due:
        return 0
    with db.write() as session:
        n = int(getattr(session.execute(
            update(Delivery).where(waiting, Delivery.destination.in_(due))
            .values(state=PENDING, next_attempt_at=now)), "rowcount", 0))
    if n:
        logger.info("%d failed deliveries to %s are tried again, ahead of newer ones", n,
                    ", ".join(sorted(due)))
    return n


def requeue_failed(db: Database, destination: str | None = None, now: dt.datetime | None = None) -> int:
    """Operator's resend: every ``failed`` row (of ``destination``) is pending again, attempts reset.

    Returns the number of rows queued again; they go in their creation order.
    """
    now = now or utcnow()
    cond = Delivery.state == FAILED
    if destination is not None:
        cond = and_(cond, Delivery.destination == destination)
    with db.write() as session:
        n = int(getattr(session.execute(update(Delivery).where(cond).values(
            state=PENDING, attempts=0, next_attempt_at=now, claimed_by="")), "rowcount", 0))
    logger.info("%d failed deliveries queued again by the operator", n)
    return n


def _claim(db: Database, now: dt.datetime, token: str) -> list[_Due]:
    """Take the due rows (creation order) and push their next attempt a lease ahead."""
    lease = now + dt.timedelta(seconds=CLAIM_SECONDS)
    with db.write() as session:
        stmt = (
            select(Delivery.id, Delivery.destination, Result.path, Result.sop_instance_uid,
                   Result.kind, Delivery.attempts, Result.study_instance_uid,
                   Result.sop_class_uid, Result.job_fk)
            .join(Result, Result.id == Delivery.result_fk)
            .where(Delivery.state == PENDING,
                   or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
            .order_by(Delivery.created_at, Delivery.id)
            .limit(BATCH)
        )
        if not db.is_sqlite:
            stmt = stmt.with_for_update(of=Delivery, skip_locked=True)
        rows = [_Due(*row) for row in session.execute(stmt).all()]
        if rows:
            session.execute(update(Delivery).where(Delivery.id.in_([r.delivery_id for r in rows]))
                            .values(next_attempt_at=lease, claimed_by=token))
    return rows


def _peer(settings: Settings, name: str) -> tuple[str, dict[str, Any]]:
    """``AE@host:port`` of a destination and its audit detail."""
    dest = _destination(settings, name)
    if dest is None:
        return "", {"destination": name}
    return (f"{dest.aetitle}@{dest.host}:{dest.port}"[:64],
            {"destination": name, "called_ae": dest.aetitle, "host": dest.host, "port": dest.port})


def _audit(session: Any, settings: Settings, kind: str, due: _Due, detail: dict[str, Any],
           now: dt.datetime) -> None:
    """One audit Event for one delivery attempt (same transaction as the row's change)."""
    peer, where = _peer(settings, due.destination)
    session.add(Event(
        at=now, kind=kind, calling_ae=settings.node.aetitle[:16], peer=peer,
        study_instance_uid=due.study_instance_uid[:64], sop_instance_uid=due.sop_instance_uid[:64],
        detail={**where, "delivery_id": due.delivery_id, "job_id": due.job_id,
                "result_kind": due.kind, "sop_class_uid": due.sop_class_uid, **detail}))


def _record(db: Database, settings: Settings, due: _Due, outcome: StoreOutcome | None,
            error: str, now: dt.datetime, report: DeliveryReport, *, unreachable: bool = False) -> None:
    """Write one attempt's result to its row and its audit Event (one short transaction).

    ``unreachable``: no association could be made (the destination is down), as
    opposed to an object the destination refused; only those keep waiting for the
    destination once their attempts are spent.
    """
    status = outcome.status if outcome is not None else None
    with db.write() as session:
        row = session.get(Delivery, due.delivery_id)
        if row is None:  # deleted by retention meanwhile
            return
        row.last_status = status
        row.claimed_by = ""
        attempts = due.attempts + 1
        if outcome is not None and outcome.delivered:
            row.state = DELIVERED
            row.delivered_at = now
            row.next_attempt_at = None
            row.last_error = ""
            row.attempts = attempts
            _audit(session, settings, "delivered", due, {"status": status, "attempt": attempts}, now)
            if status != st.SUCCESS:
                logger.warning("delivered %s %s to %s with %s", due.kind, due.sop_instance_uid,
                               due.destination, st.describe(status or 0))
                report.count(due.destination, "warnings")
            report.count(due.destination, "delivered")
            return
        if outcome is not None and outcome.status is None and outcome.error.startswith(NEVER_SENT):
            # Its turn never came: the association went away under an earlier object.
            # Not an attempt, and due at once, so a new association takes it (and the
            # rest) without the object that broke this one, which waits its backoff.
            row.next_attempt_at = now
            row.last_error = outcome.error[:2000]
            report.count(due.destination, "retrying")
            return
        row.attempts = attempts
        row.last_error = (error or (outcome.describe() if outcome else "not sent"))[:2000]
        limit = settings.delivery.max_attempts
        if limit and attempts >= limit:
            row.state = FAILED
            # Never dropped: a destination that is down is tried again at the capped
            # backoff; an object it refused waits for the operator.
            row.next_attempt_at = (now + dt.timedelta(seconds=backoff_seconds(settings, attempts))
                                   if unreachable else None)
            _audit(session, settings, "delivery-failed", due,
                   {"status": status, "attempt": attempts, "error": row.last_error[:500],
                    "waiting_for_destination": unreachable}, now)
            logger.error("delivery of %s %s to %s failed after %d attempts: %s; %s",
                         due.kind, due.sop_instance_uid, due.destination, attempts, row.last_error,
                         f"the destination is tried again from {row.next_attempt_at.isoformat()}"
                         if row.next_attempt_at else "it waits for an operator to send it again")
            report.count(due.destination, "failed")
            return
        delay = backoff_seconds(settings, attempts)
        row.next_attempt_at = now + dt.timedelta(seconds=delay)
        if not (unreachable and outcome is None):  # no association: one Event for the group
            _audit(session, settings, "delivery-retry", due,
                   {"status": status, "attempt": attempts, "error": row.last_error[:500]}, now)
        logger.warning(
            "delivery of %s %s to %s failed (attempt %d): %s; next attempt at %s (in %g s)",
            due.kind, due.sop_instance_uid, due.destination, attempts, row.last_error,
            row.next_attempt_at.isoformat(timespec="seconds"), delay,
        )
        report.count(due.destination, "retrying")


def _destination(settings: Settings, name: str) -> Destination | None:
    for dest in settings.destinations:
        if dest.name == name:
            return dest
    return None


def deliver_due(
    db: Database, settings: Settings, spool_root: Path, now: dt.datetime | None = None,
) -> DeliveryReport:
    """Send every due pending Delivery; one association per destination, creation order.

    Parameters
    ----------
    db : Database
        The index (all outbox state lives there).
    settings : Settings
        ``destinations``, ``delivery`` (backoff, max attempts), ``node`` (AE title,
        timeouts) and ``tls``.
    spool_root : Path
        The spool directory the Result paths are relative to.
    now : datetime, optional
        Naive UTC "now" (tests pass it to step through the backoff schedule).

    Returns
    -------
    DeliveryReport
        Counts of this call.
    """
    now = now or utcnow()
    report = DeliveryReport()
    release_dead_claims(db, now)
    _revive_exhausted(db, now)
    due = _claim(db, now, claim_token())
    if not due:
        return report
    groups: dict[str, list[_Due]] = {}
    for row in due:
        groups.setdefault(row.destination, []).append(row)
    link = Link.from_settings(settings)
    for name, rows in groups.items():
        dest = _destination(settings, name)
        with bind(destination=name, ae=dest.aetitle if dest else ""):
            if dest is None:
                for row in rows:
                    _record(db, settings, row, None,
                            f"no destination named {name!r} in the configuration", now, report)
                continue
            _send_group(db, settings, dest, rows, Path(spool_root), link, now, report)
    return report


def _send_group(db: Database, settings: Settings, dest: Destination, rows: list[_Due],
                spool_root: Path, link: Link, now: dt.datetime, report: DeliveryReport) -> None:
    present = [r for r in rows if (spool_root / r.path).is_file()]
    for row in rows:
        if row not in present:
            _record(db, settings, row, None, f"spool file {row.path} is missing", now, report)
    if not present:
        return
    recorded: set[int] = set()
    delivered: list[_Due] = []
    try:
        outcomes = send_files(dest, [spool_root / r.path for r in present], link)
        for row, outcome in zip(present, outcomes, strict=False):
            # The object whose C-STORE got no answer is a failed attempt like a refusal
            # (not "destination unreachable"): one that makes the PACS abort every time
            # must not head the queue for ever and hold back everything after it.
            _record(db, settings, row, outcome, "", now, report)
            recorded.add(row.delivery_id)
            if outcome.delivered:
                delivered.append(row)
    except AssociationFailed as exc:
        # No association: every row of the group waits for the same next attempt,
        # which keeps the destination's order when it comes back.
        left = [row for row in present if row.delivery_id not in recorded]
        for row in left:
            _record(db, settings, row, None, str(exc), now, report, unreachable=True)
        if left:
            with db.write() as session:
                peer, where = _peer(settings, dest.name)
                session.add(Event(at=now, kind="delivery-unreachable",
                                  calling_ae=settings.node.aetitle[:16], peer=peer,
                                  detail={**where, "objects": len(left), "error": str(exc)[:500],
                                          "delivery_ids": [r.delivery_id for r in left][:100]}))
        return
    if dest.storage_commitment and delivered:
        _request_commitment(db, settings, dest, delivered, link, now)


def _request_commitment(db: Database, settings: Settings, dest: Destination, rows: list[_Due],
                        link: Link, now: dt.datetime) -> None:
    """Ask the destination to commit to what it just accepted (PS3.4 Annex J)."""
    from dicomnode.net.scu import request_commitment
    from dicomnode.results.uids import derive_uid

    with db.session() as session:
        refs = [(str(c), str(u)) for c, u in session.execute(
            select(Result.sop_class_uid, Result.sop_instance_uid)
            .join(Delivery, Delivery.result_fk == Result.id)
            .where(Delivery.id.in_([r.delivery_id for r in rows])))]
    transaction = derive_uid(settings.node.uid_root, "commitment", dest.name,
                             ",".join(str(r.delivery_id) for r in rows), now.isoformat())
    try:
        code = request_commitment(dest, transaction, refs, link)
    except AssociationFailed as exc:
        logger.warning("storage commitment request to %s failed: %s", dest.name, exc)
        return
    if code != st.SUCCESS:
        logger.warning("storage commitment request to %s answered %s", dest.name, st.describe(code))
    else:
        logger.info("storage commitment requested from %s for %d objects (transaction %s)",
                    dest.name, len(refs), transaction)


def record_commitment(db: Database, settings: Settings, calling_ae: str, committed: Sequence[str],
                      failed: Sequence[str], now: dt.datetime | None = None) -> int:
    """Set ``committed_at`` on the deliveries a destination's N-EVENT-REPORT confirms.

    Failed references go back to ``pending`` (the PACS lost them: send again).
    Returns the number of rows confirmed.
    """
    now = now or utcnow()
    names = [d.name for d in settings.destinations if d.aetitle == calling_ae.strip()]
    if not names:
        logger.warning("storage commitment report from unknown AE %r ignored", calling_ae)
        return 0
    with db.write() as session:
        base = (select(Delivery).join(Result, Result.id == Delivery.result_fk)
                .where(Delivery.destination.in_(names)))
        confirmed = list(session.scalars(base.where(Result.sop_instance_uid.in_(list(committed)))))
        for row in confirmed:
            row.committed_at = now
        for row in session.scalars(base.where(Result.sop_instance_uid.in_(list(failed)))):
            row.state, row.next_attempt_at = PENDING, now
            row.last_error = "storage commitment failed: sending again"
    return len(confirmed)


# ---------------------------------------------------------------------------
# What is pending, and why (dicomnode status, dicomnode jobs show)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingDelivery:
    """One undelivered (or failed) Delivery with the reason and the next attempt."""

    delivery_id: int
    destination: str
    kind: str
    sop_instance_uid: str
    study_instance_uid: str
    job_id: int | None
    state: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None

    def reason(self) -> str:
        """Human-readable: why it is not delivered yet."""
        if self.attempts == 0:
            return "queued, not tried yet"
        status = f"{st.describe(self.last_status)}: " if self.last_status is not None else ""
        return f"{status}{self.last_error}".strip()

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("created_at", "next_attempt_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        out["reason"] = self.reason()
        return out


@dataclass(frozen=True)
class DestinationSummary:
    """Per destination: how many wait, the oldest, the next attempt, the last reason."""

    destination: str
    pending: int
    failed: int
    delivered: int
    uncommitted: int
    oldest_pending_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    last_error: str

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("oldest_pending_at", "next_attempt_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


def pending_deliveries(db: Database, *, job_id: int | None = None,
                       study_instance_uid: str | None = None, limit: int = 200) -> list[PendingDelivery]:
    """Deliveries not yet delivered (pending or failed), oldest first."""
    stmt = (
        select(Delivery, Result).join(Result, Result.id == Delivery.result_fk)
        .where(Delivery.state != DELIVERED).order_by(Delivery.created_at, Delivery.id).limit(limit)
    )
    if job_id is not None:
        stmt = stmt.where(Result.job_fk == job_id)
    if study_instance_uid is not None:
        stmt = stmt.where(Result.study_instance_uid == study_instance_uid)
    with db.session() as session:
        return [
            PendingDelivery(d.id, d.destination, r.kind, r.sop_instance_uid, r.study_instance_uid,
                            r.job_fk, d.state, d.attempts, d.last_status, d.last_error, d.created_at,
                            d.next_attempt_at)
            for d, r in session.execute(stmt).all()
        ]


def pending_summary(db: Database) -> list[DestinationSummary]:
    """One line per destination for ``dicomnode status``."""
    out = []
    with db.session() as session:
        names = list(session.scalars(select(Delivery.destination).distinct().order_by(Delivery.destination)))
        for name in names:
            counts = dict(session.execute(
                select(Delivery.state, func.count()).where(Delivery.destination == name)
                .group_by(Delivery.state)).all())
            pending = and_(Delivery.destination == name, Delivery.state == PENDING)
            # Failed rows that wait for their destination are tried again by themselves.
            waiting = and_(Delivery.destination == name, or_(
                Delivery.state == PENDING,
                and_(Delivery.state == FAILED, Delivery.next_attempt_at.is_not(None))))
            oldest = session.scalar(select(func.min(Delivery.created_at)).where(pending))
            next_at = session.scalar(select(func.min(Delivery.next_attempt_at)).where(waiting))
            last_error = session.scalars(
                select(Delivery.last_error).where(
                    Delivery.destination == name, Delivery.state != DELIVERED, Delivery.last_error != "")
                .order_by(Delivery.id.desc()).limit(1)).first() or ""
            uncommitted = session.scalar(select(func.count()).where(
                Delivery.destination == name, Delivery.state == DELIVERED,
                Delivery.committed_at.is_(None))) or 0
            out.append(DestinationSummary(
                name, counts.get(PENDING, 0), counts.get(FAILED, 0), counts.get(DELIVERED, 0),
                uncommitted, oldest, next_at, last_error))
    return out
