"""The index and the ingest path on SQLite and PostgreSQL; the spool's guarantees."""
from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from dicom_factory import make_dataset, uid, write
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from sqlalchemy import func, select

from dicomnode.errors import OutOfResourcesError
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.index import list_studies, study_detail
from dicomnode.storage.ingest import Ingestor, valid_uid
from dicomnode.storage.models import Base, Instance, Series, Study
from dicomnode.storage.spool import ReceiveFile, Spool


def receive(spool: Spool, source: Path) -> ReceiveFile:
    """Stream a file into a ReceiveFile the way pynetdicom's chunked receive does."""
    rf = ReceiveFile(spool.new_temp_path())
    data = source.read_bytes()
    for i in range(0, len(data), 16384):
        rf.write(data[i:i + 16384])
    rf.close()
    return rf


def ingest(ingestor: Ingestor, spool: Spool, source: Path) -> None:
    rf = receive(spool, source)
    try:
        ingestor.ingest(rf.path, rf.sha256, rf.size, context_sop_class=MRImageStorage,
                        transfer_syntax=ExplicitVRLittleEndian, calling_ae="TEST")
    finally:
        rf.discard()


def test_migrations_create_exactly_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_opening_twice_does_not_migrate_again(database_url: str) -> None:
    open_database(database_url).dispose()
    db = open_database(database_url)
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"
    db.dispose()


def test_ingest_indexes_patient_study_series_instance(db: Database, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(db, spool)
    study = uid()
    for i in range(3):
        ingest(ingestor, spool, write(make_dataset(study_uid=study, seed=i), tmp_path / f"{i}.dcm"))
    with db.session() as s:
        [summary] = list_studies(s)
        assert (summary.study_instance_uid, summary.series, summary.instances) == (study, 3, 3)
        detail = study_detail(s, study)
        assert detail is not None and detail["patient_id"] == "TEST-0001"
        for inst in s.scalars(select(Instance)):
            assert (spool.root / inst.path).stat().st_size == inst.size


def test_an_arrival_reopens_its_series_and_study_and_a_new_series_marks_the_study(
        db: Database, tmp_path: Path) -> None:
    """What routing relies on: each arrival touches its series and study (quiet periods), a
    complete series and a routed study are opened again, a new series moves the study's
    ``last_series_added_at``; another copy replaces the file, the same bytes are a duplicate."""
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(db, spool)
    study, series_a, series_b = uid(), uid(), uid()
    first = write(make_dataset(study_uid=study, series_uid=series_a, seed=1), tmp_path / "a1.dcm")
    ingest(ingestor, spool, first)
    with db.write() as s:
        st = s.scalars(select(Study)).one()
        se = s.scalars(select(Series)).one()
        assert (st.state, se.state, se.study_fk, st.patient_fk is not None) == ("receiving", "open", st.id, True)
        assert (se.modality, se.series_number, se.calling_ae) == ("MR", 1, "TEST")
        added, received = st.last_series_added_at, se.last_received_at
        st.state, se.state = "routed", "complete"
        se.completed_at = se.last_received_at
    ingest(ingestor, spool, write(make_dataset(study_uid=study, series_uid=series_a, seed=2), tmp_path / "a2.dcm"))
    with db.session() as s:
        st = s.scalars(select(Study)).one()
        se = s.scalars(select(Series)).one()
        assert (st.state, se.state, se.completed_at) == ("receiving", "open", None)
        assert se.last_received_at > received and st.last_received_at >= se.last_received_at
        assert st.last_series_added_at == added  # same series: no new series
    ingest(ingestor, spool, write(make_dataset(study_uid=study, series_uid=series_b, seed=3), tmp_path / "b1.dcm"))
    with db.session() as s:
        st = s.scalars(select(Study)).one()
        assert st.last_series_added_at > added
        assert s.scalar(select(func.count(Series.id))) == 2
        assert s.scalar(select(func.count(Instance.id))) == 3

    sop = str(pydicom.dcmread(first).SOPInstanceUID)
    with db.session() as s:
        old = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one().path
    ingest(ingestor, spool, first)  # the same bytes again: a duplicate, nothing changes
    other = write(make_dataset(study_uid=study, series_uid=series_a, sop_uid=sop, seed=9), tmp_path / "a1b.dcm")
    ingest(ingestor, spool, other)  # other bytes, same SOP Instance UID: replaced (keep_newest)
    with db.session() as s:
        rows = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).all()
        assert len(rows) == 1 and rows[0].path != old and rows[0].size == other.stat().st_size
        assert s.scalar(select(func.count(Instance.id))) == 3
    assert not (spool.root / old).exists() and (spool.root / rows[0].path).exists()


def test_parallel_ingest_of_one_new_series_creates_it_once(db: Database, tmp_path: Path) -> None:
    """Receivers racing on the same new patient/study/series (ON CONFLICT DO NOTHING)."""
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(db, spool)
    study, series = uid(), uid()
    files = [write(make_dataset(study_uid=study, series_uid=series, seed=i), tmp_path / f"{i}.dcm")
             for i in range(16)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(chunk: list[Path]) -> None:
        try:
            barrier.wait()
            for f in chunk:
                ingest(ingestor, spool, f)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(files[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert s.scalar(select(func.count(Study.id))) == 1
        assert s.scalar(select(func.count(Series.id))) == 1
        assert s.scalar(select(func.count(Instance.id))) == 16


def test_index_down_answers_out_of_resources_and_recovers(postgres, make_db, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "downtest"'))
    admin.dispose()
    db = make_db(postgres.url.rsplit("/", 1)[0] + "/downtest")
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(db, spool)
    ingest(ingestor, spool, write(make_dataset(), tmp_path / "a.dcm"))
    postgres.stop("immediate")
    try:
        with pytest.raises(OutOfResourcesError):
            ingest(ingestor, spool, write(make_dataset(), tmp_path / "b.dcm"))
    finally:
        postgres.start()
        postgres.wait_ready()
    ingest(ingestor, spool, write(make_dataset(), tmp_path / "c.dcm"))
    with db.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 2
    # The refused instance left no file behind.
    assert len([p for p in spool.root.rglob("*.dcm") if p.parent != spool.tmp]) == 2


def test_spool_paths_come_from_hashes_never_from_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rel = spool.relative_path("../../x", "1.2.3", "1.2.3.4", "ab" * 32)
    assert ".." not in rel and "x" not in rel.split("/")
    assert spool.absolute(rel).is_relative_to(spool.root)
    with pytest.raises(ValueError):
        spool.absolute("../outside.dcm")


def test_place_is_atomic_and_cleans_nothing_else(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    tmp = spool.new_temp_path()
    tmp.write_bytes(b"x" * 1000)
    final = spool.place(tmp, "aa/bb/cc.dcm")
    assert final.read_bytes() == b"x" * 1000 and not tmp.exists()
    (spool.tmp / "leftover.dcm").write_bytes(b"partial")
    assert spool.clean_temp() == 1 and final.exists()


def test_receive_file_turns_a_write_error_into_a_flag(tmp_path: Path) -> None:
    rf = ReceiveFile(tmp_path / "r.dcm")
    rf.write(b"abc")
    import os

    os.close(rf._fd)  # the next write fails like a full disk would (EBADF here)
    rf._fd = os.open("/dev/full", os.O_WRONLY)
    rf.write(b"more")
    assert rf.error is not None and not (tmp_path / "r.dcm").exists()
    assert rf.write(b"ignored") == 7  # the rest of the data set is swallowed


@pytest.mark.parametrize(
    ("value", "ok"),
    [("1.2.840.10008.1.2", True), ("0.1", True), ("1.02", False), ("1..2", False),
     ("../../x", False), ("1.2." + "3" * 62, False), ("", False), ("1.2 ", False)],
)
def test_uid_rule_of_ps3_5(value: str, ok: bool) -> None:
    assert valid_uid(value) is ok


def test_nodes_starting_together_migrate_one_index_once(postgres, tmp_path: Path) -> None:
    """Four processes open one empty PostgreSQL index at the same moment."""
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "racetest"'))
    admin.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/racetest"
    code = f"from dicomnode.storage.db import open_database; open_database({url!r}).dispose()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    db = open_database(url)
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"
    db.dispose()


def test_a_foreign_sqlite_lock_answers_every_writer_within_about_one_busy_timeout(tmp_path: Path) -> None:
    """Six parallel ingests (six associations) while another connection holds the write
    lock: each is refused out of resources after about one busy timeout, not after
    queueing behind the others (which took 6 × the timeout); writing resumes after."""
    import sqlite3
    import time

    from dicomnode.storage.db import LOCKED_FAIL_FAST_SECONDS

    path = tmp_path / "index.sqlite"
    db = open_database(f"sqlite:///{path}", fsync=False, busy_timeout=1.5)
    spool = Spool(tmp_path / "spool")
    ingestor = Ingestor(db, spool)
    files = [write(make_dataset(), tmp_path / f"{i}.dcm") for i in range(6)]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a backup or an open transaction holds it
    answers: dict[int, tuple[str, float]] = {}

    def one(i: int) -> None:
        t0 = time.monotonic()
        try:
            ingest(ingestor, spool, files[i])
            answers[i] = ("stored", time.monotonic() - t0)
        except OutOfResourcesError:
            answers[i] = ("refused", time.monotonic() - t0)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert {a for a, _ in answers.values()} == {"refused"} and len(answers) == 6
    slowest = max(t for _, t in answers.values())
    assert slowest < 2 * 1.5 + 1.0, f"a writer waited {slowest:.1f} s: the writers queued"
    time.sleep(LOCKED_FAIL_FAST_SECONDS + 0.2)
    ingest(ingestor, spool, files[0])  # the lock is gone: writing resumes
    with db.session() as s:
        assert s.scalar(select(func.count(Instance.id))) == 1
    assert len([p for p in spool.root.rglob("*.dcm") if p.parent != spool.tmp]) == 1
    db.dispose()


def test_upgrade_from_0001_keeps_the_outbox_rows(database_url: str) -> None:
    """A node installed before migration 0002 (delivery.claimed_by) upgrades with its
    pending deliveries intact, each unclaimed."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from dicomnode.storage.db import MIGRATIONS_DIR
    from dicomnode.storage.models import Delivery

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(database_url)
    cfg.attributes["connection_engine"] = engine
    command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO result (id, study_instance_uid, module, kind, sop_instance_uid, sop_class_uid,"
            " series_instance_uid, path, superseded_by, created_at, findings) VALUES (1, '1.2', 'm', 'SR',"
            " '1.2.3', '1.2.840.10008.5.1.4.1.1.88.33', '1.2.4', 'a/b.dcm', '', '2026-01-01', '{}')"))
        conn.execute(text(
            "INSERT INTO delivery (result_fk, destination, state, attempts, last_error, created_at)"
            " VALUES (1, 'pacs', 'pending', 2, 'down', '2026-01-01')"))
    engine.dispose()
    db = open_database(database_url)  # upgrades to the newest revision
    with db.session() as s:
        (row,) = s.scalars(select(Delivery)).all()
    assert (row.destination, row.state, row.attempts, row.last_error, row.claimed_by) == (
        "pacs", "pending", 2, "down", "")
    db.dispose()
