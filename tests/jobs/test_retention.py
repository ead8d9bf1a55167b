"""Retention deletes old finished studies (files and rows) and never anything still pending."""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import make_dataset, uid, write
from sqlalchemy import func, select, update

from dicomnode.config import Settings
from dicomnode.jobs.retention import sweep_retention
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.ingest import Ingestor
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


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, Database, Spool]]:
    settings = Settings(node={"data_dir": tmp_path, "fsync": False}, retention={"days": 30})
    db = open_database(settings.database_url, fsync=False)
    yield settings, db, Spool(settings.spool_dir, fsync=False)
    db.dispose()


def _study(settings: Settings, db: Database, spool: Spool, age_days: float, job_state: str,
           delivery_state: str) -> tuple[str, list[Path]]:
    """A routed study with one instance, one job and one delivered-or-not result."""
    study = uid()
    src = write(make_dataset(study_uid=study, rows=16, columns=16), settings.data_dir / "in" / f"{study}.dcm")
    tmp = spool.new_temp_path()
    shutil.copy(src, tmp)
    data = tmp.read_bytes()
    Ingestor(db, spool).ingest(tmp, hashlib.sha256(data).hexdigest(), len(data),
                               context_sop_class="1.2.840.10008.5.1.4.1.1.4",
                               transfer_syntax="1.2.840.10008.1.2.1")
    result_path = f"results/{study}.dcm"
    spool.write_bytes(b"result bytes", result_path)
    then = utcnow() - dt.timedelta(days=age_days)
    with db.write() as s:
        s.execute(update(Study).where(Study.study_instance_uid == study).values(
            state="routed", generation=1, last_received_at=then, routed_at=then))
        job = Job(idempotency_key=hashlib.sha256(study.encode()).hexdigest(), module="quality",
                  study_instance_uid=study, state=job_state, generation=1)
        s.add(job)
        s.flush()
        result = Result(job_fk=job.id, study_instance_uid=study, module="quality", kind="SR",
                        sop_instance_uid=uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                        series_instance_uid=uid(), path=result_path)
        s.add(result)
        s.flush()
        s.add(Delivery(result_fk=result.id, destination="pacs", state=delivery_state))
        instances = s.scalars(select(Instance.path).join(Series).join(Study)
                              .where(Study.study_instance_uid == study)).all()
    return study, [spool.absolute(p) for p in [*instances, result_path]]


def _exists(db: Database, study: str) -> bool:
    with db.session() as s:
        return s.scalar(select(func.count()).where(Study.study_instance_uid == study)) == 1


def test_only_old_studies_with_nothing_pending_are_deleted_with_their_files(
    node: tuple[Settings, Database, Spool],
) -> None:
    settings, db, spool = node
    old, old_files = _study(settings, db, spool, 40, "done", "delivered")
    running, _ = _study(settings, db, spool, 40, "running", "delivered")
    sending, _ = _study(settings, db, spool, 40, "done", "pending")
    undelivered, kept_files = _study(settings, db, spool, 40, "done", "failed")
    young, _ = _study(settings, db, spool, 5, "done", "delivered")
    assert all(p.exists() for p in old_files)

    assert sweep_retention(db, settings) == [old]
    assert not _exists(db, old)
    assert all(_exists(db, s) for s in (running, sending, undelivered, young))
    assert all(p.exists() for p in kept_files)  # a failed delivery is undelivered data
    assert not any(p.exists() for p in old_files)
    with db.session() as s:
        for model, column in ((Job, Job.study_instance_uid), (Result, Result.study_instance_uid)):
            assert s.scalar(select(func.count()).select_from(model).where(column == old)) == 0
        assert s.scalar(select(func.count()).select_from(Series)) == 4
        assert s.scalar(select(func.count()).select_from(Delivery)) == 4
        assert s.scalar(select(func.count()).select_from(Patient)) == 1  # shared by the others
        (event,) = s.scalars(select(Event).where(Event.kind == "study-deleted")).all()
    assert event.study_instance_uid == old and event.detail["reason"] == "retention"

    settings.retention.days = 0  # keep forever
    assert sweep_retention(db, settings, utcnow() + dt.timedelta(days=3650)) == []
    assert all(_exists(db, s) for s in (running, sending, undelivered, young))
