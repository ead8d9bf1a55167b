"""Keeping results: spool files, index rows, the outbox's Delivery rows, supersession.

:func:`store_results` is the job runner's second call after
:func:`~dicomnode.results.build.build_results`.  Order is the receiver's (file
first, then index): each object is written to the spool durably (temporary file,
fsync, rename, directory fsync, hashed path) and then **one** transaction indexes
them all like received instances (``Series.is_result``), adds their ``Result`` rows,
marks what they supersede, and queues one ``Delivery`` per destination.  A crash
leaves either all of a job's results queued or none (plus orphan spool files the
retention sweep removes).

A retried job re-creates objects with the same SOP Instance UIDs
(:mod:`~dicomnode.results.uids`); those already stored are kept as they are, only
missing Delivery rows are added, so nothing is sent twice; Delivery rows that had
``failed`` are queued again (that is how re-running a job resends its results).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.log import bind
from dicomnode.storage.db import Database
from dicomnode.storage.index import get_or_create
from dicomnode.storage.models import Delivery, Instance, Patient, Result, Series, Study, utcnow
from dicomnode.storage.spool import Spool

if TYPE_CHECKING:  # highdicom stays out of processes that only deliver or record
    from dicomnode.results.build import ResultObject

logger = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class StoredResult:
    """One object after :func:`store_results`: its row id, spool path, and whether it was new."""

    result_id: int
    sop_instance_uid: str
    kind: str
    path: str
    created: bool


def encode(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)[:limit]


def _index_instance(session: Session, ds: Dataset, relative: str, size: int, sha256: str,
                    now: dt.datetime) -> None:
    """Index a result like a received instance, without re-opening its study.

    Routing must not run again because the node added its own objects, so the
    study's state and timers are left alone and the result series is born complete.
    """
    patient, _ = get_or_create(
        session, Patient,
        {"patient_id": _text(ds, "PatientID"), "issuer_of_patient_id": _text(ds, "IssuerOfPatientID")},
        {"patient_name": _text(ds, "PatientName", 324), "patient_birth_date": _text(ds, "PatientBirthDate", 8),
         "patient_sex": _text(ds, "PatientSex", 16)},
    )
    study, _ = get_or_create(
        session, Study, {"study_instance_uid": str(ds.StudyInstanceUID)},
        {"patient_fk": patient.id, "study_date": _text(ds, "StudyDate", 8),
         "study_time": _text(ds, "StudyTime", 16), "accession_number": _text(ds, "AccessionNumber", 16),
         "study_description": _text(ds, "StudyDescription")},
    )
    series, _ = get_or_create(
        session, Series, {"series_instance_uid": str(ds.SeriesInstanceUID)},
        {"study_fk": study.id, "modality": _text(ds, "Modality", 16),
         "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") is not None else None,
         "series_description": _text(ds, "SeriesDescription"),
         "body_part_examined": _text(ds, "BodyPartExamined", 16),
         "is_result": True, "state": "complete", "completed_at": now},
    )
    if session.scalars(select(Instance.id).where(
            Instance.sop_instance_uid == str(ds.SOPInstanceUID))).first() is None:
        session.add(Instance(
            sop_instance_uid=str(ds.SOPInstanceUID), series_fk=series.id,
            sop_class_uid=str(ds.SOPClassUID), transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
            number_of_frames=int(ds.get("NumberOfFrames") or 1), rows=ds.get("Rows"),
            columns=ds.get("Columns"), received_at=now, path=relative, size=size, sha256=sha256,
        ))


def store_results(
    db: Database,
    spool: Spool | Path,
    job_id: int | None,
    objects: Sequence[ResultObject],
    destinations: Sequence[str],
    *,
    now: dt.datetime | None = None,
) -> list[StoredResult]:
    """Write ``objects`` to the spool and index them, queue deliveries, mark supersession.

    Parameters
    ----------
    db : Database
        The index.
    spool : Spool or Path
        The spool (a directory is opened as one).
    job_id : int, optional
        The ``Job`` row the objects came from.
    objects : sequence of ResultObject
        From :func:`~dicomnode.results.build.build_results`, in delivery order.
    destinations : sequence of str
        Destination names (``[[destinations]] name``); one Delivery row per object each.
    now : datetime, optional
        Naive UTC; the first delivery attempt is due then.

    Returns
    -------
    list of StoredResult
        In the order of ``objects``.
    """
    spool = spool if isinstance(spool, Spool) else Spool(Path(spool))
    now = now or utcnow()
    uids = [o.sop_instance_uid for o in objects]
    if len(set(uids)) != len(uids):
        raise ValueError("store_results: duplicate SOP Instance UIDs among the objects")
    with db.session() as session:
        known = {r.sop_instance_uid: (r.id, r.path) for r in session.scalars(
            select(Result).where(Result.sop_instance_uid.in_(uids)))}

    files: dict[str, tuple[str, int, str]] = {}
    for obj in objects:
        if obj.sop_instance_uid in known:
            continue
        data = encode(obj.dataset)
        sha = hashlib.sha256(data).hexdigest()
        relative = spool.relative_path(obj.study_instance_uid, obj.series_instance_uid,
                                       obj.sop_instance_uid, sha)
        spool.write_bytes(data, relative)
        files[obj.sop_instance_uid] = (relative, len(data), sha)

    out: list[StoredResult] = []
    with bind(job=job_id), db.write() as session:
        for obj in objects:
            uid = obj.sop_instance_uid
            if uid in known:
                result_id, relative = known[uid]
                created = False
            else:
                relative, size, sha = files[uid]
                _index_instance(session, obj.dataset, relative, size, sha, now)
                row = Result(
                    job_fk=job_id, study_instance_uid=obj.study_instance_uid, module=obj.module,
                    kind=obj.kind, sop_instance_uid=uid, sop_class_uid=obj.sop_class_uid,
                    series_instance_uid=obj.series_instance_uid, path=relative, created_at=now,
                    findings=dict(obj.findings),
                )
                session.add(row)
                session.flush()
                result_id, created = row.id, True
            have = {d.destination: d for d in session.scalars(select(Delivery).where(
                Delivery.result_fk == result_id))}
            for name in destinations:
                if name not in have:
                    session.add(Delivery(result_fk=result_id, destination=name, state=PENDING,
                                         created_at=now, next_attempt_at=now))
                elif have[name].state == FAILED:
                    # A job run again (``dicomnode jobs retry --force``) is how an operator
                    # resends what a destination refused: the same object, attempts anew.
                    failed = have[name]
                    failed.state, failed.attempts, failed.next_attempt_at = PENDING, 0, now
                    failed.claimed_by = ""
                    logger.info("delivery of %s to %s queued again (it had failed: %s)",
                                uid, name, failed.last_error[:200])
            if obj.supersedes:
                _supersede(session, uid, obj.supersedes, set(uids))
            out.append(StoredResult(result_id, uid, obj.kind, relative, created))
    with bind(job=job_id):
        for item in out:
            logger.info("stored %s result %s (%s)%s", item.kind, item.sop_instance_uid, item.path,
                        "" if item.created else " - already stored")
    return out


def _supersede(session: Session, new_uid: str, old_uids: Sequence[str], keep: set[str]) -> None:
    """Mark the superseded documents, and the rest of their job's objects, as replaced.

    The old SC and KOS images describe the old findings too; they stay in the index
    (and in the PACS) but ``superseded_by`` says which report replaced them.
    """
    olds = list(session.scalars(select(Result).where(Result.sop_instance_uid.in_(old_uids))))
    missing = set(old_uids) - {r.sop_instance_uid for r in olds}
    if missing:
        logger.warning("superseded documents not in the index: %s", ", ".join(sorted(missing)))
    jobs = {r.job_fk for r in olds if r.job_fk is not None}
    siblings = list(session.scalars(select(Result).where(Result.job_fk.in_(jobs)))) if jobs else []
    for row in [*olds, *siblings]:
        if row.sop_instance_uid in keep or row.superseded_by:
            continue
        row.superseded_by = new_uid
        logger.info("result %s (%s) superseded by %s", row.sop_instance_uid, row.kind, new_uid)

