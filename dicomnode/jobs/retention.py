"""Retention: delete studies (spool files and rows) older than ``retention.days``.

A study goes only when nothing about it is pending: it is ``routed`` (not receiving
or waiting to be routed), every job of it is finished, and every delivery of its
results is delivered (a ``failed`` one is undelivered data: it waits for its
destination or an operator, and keeps its study).  Rows go first, in one transaction, then the files: a
crash in between leaves unreferenced files (harmless), never rows that point at
deleted files.  The audit trail (``event``) is kept, with one row per deletion.
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, exists, select

from dicomnode.config import Settings
from dicomnode.jobs.queue import UNFINISHED
from dicomnode.storage.db import Database
from dicomnode.storage.models import (
    Delivery,
    Event,
    Instance,
    Job,
    Patient,
    Result,
    Series,
    Study,
    utcnow,
)
from dicomnode.storage.spool import Spool

logger = logging.getLogger(__name__)

#: Studies examined per sweep, so one sweep never holds the write lock for long.
BATCH = 50


def _deletable(db: Database, cutoff: dt.datetime) -> list[tuple[int, str]]:
    busy_job = exists().where(Job.study_instance_uid == Study.study_instance_uid,
                              Job.state.in_(UNFINISHED))
    busy_delivery = exists().where(Result.study_instance_uid == Study.study_instance_uid,
                                   Delivery.result_fk == Result.id, Delivery.state != "delivered")
    with db.session() as s:
        return [(r.id, r.study_instance_uid) for r in s.execute(
            select(Study.id, Study.study_instance_uid).where(
                Study.state == "routed", Study.last_received_at < cutoff,
                Study.routed_at < cutoff, ~busy_job, ~busy_delivery)
            .order_by(Study.last_received_at).limit(BATCH))]


def delete_study(db: Database, spool: Spool, study_id: int, cutoff: dt.datetime) -> int | None:
    """Delete one study's rows (re-checking it is still idle and old) and then its files.

    Returns the number of spool files removed, or None when the study became busy
    (or young again) meanwhile and was kept.
    """
    with db.write() as s:
        study = s.get(Study, study_id)
        if study is None or study.state != "routed" or study.last_received_at >= cutoff:
            return None
        uid = study.study_instance_uid
        if s.scalar(select(exists().where(Job.study_instance_uid == uid, Job.state.in_(UNFINISHED)))):
            return None
        if s.scalar(select(exists().where(Result.study_instance_uid == uid,
                                          Delivery.result_fk == Result.id,
                                          Delivery.state != "delivered"))):
            return None
        series_ids = list(s.scalars(select(Series.id).where(Series.study_fk == study_id)))
        paths = list(s.scalars(select(Instance.path).where(Instance.series_fk.in_(series_ids))))
        result_ids = list(s.scalars(select(Result.id).where(Result.study_instance_uid == uid)))
        paths += [p for p in s.scalars(select(Result.path).where(Result.id.in_(result_ids)))
                  if p not in paths]
        s.execute(delete(Delivery).where(Delivery.result_fk.in_(result_ids)))
        s.execute(delete(Result).where(Result.id.in_(result_ids)))
        s.execute(delete(Job).where(Job.study_instance_uid == uid))
        s.execute(delete(Instance).where(Instance.series_fk.in_(series_ids)))
        s.execute(delete(Series).where(Series.id.in_(series_ids)))
        patient_fk = study.patient_fk
        s.delete(study)
        s.flush()
        if not s.scalar(select(exists().where(Study.patient_fk == patient_fk))):
            s.execute(delete(Patient).where(Patient.id == patient_fk))
        s.add(Event(kind="study-deleted", study_instance_uid=uid,
                    detail={"reason": "retention", "files": len(paths)}))
    removed = 0
    for rel in paths:
        try:
            spool.remove(rel)
            removed += 1
        except (OSError, ValueError) as exc:
            logger.warning("retention: cannot remove %s: %s", rel, exc)
    logger.info("retention: deleted study %s (%d files)", uid, removed)
    return removed


def sweep_retention(db: Database, settings: Settings, now: dt.datetime | None = None) -> list[str]:
    """Delete every idle study older than ``retention.days`` (0 = keep forever); their UIDs."""
    if settings.retention.days <= 0:
        return []
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=settings.retention.days)
    spool = Spool(settings.spool_dir, fsync=settings.node.fsync)
    done = []
    for study_id, uid in _deletable(db, cutoff):
        if delete_study(db, spool, study_id, cutoff) is not None:
            done.append(uid)
    return done
