"""The index goes away mid-load: SQLite locked by another process, PostgreSQL restarted.

A sender keeps storing instances, one C-STORE after another, while the test takes
the database away for real: another process holds SQLite's write lock
(``BEGIN IMMEDIATE``) for longer than the node's busy timeout (30 s), or
PostgreSQL is stopped (``pg_ctl stop -m fast``, which also cuts the node's open
connections) and started again.

Asserted: every C-STORE is answered; an instance that could not be indexed is
answered out of resources (0xA7xx), never success; at every moment the index holds
exactly the acknowledged instances (no success without an index row, no row for a
refusal, no spool file left by a refusal); receiving resumes by itself when the
database is back; the refused instances stored on a second try; and the series'
job and its deliveries run to the end.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import free_port
from dicom_factory import make_dataset, uid, write
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from results.test_outbox import storage_scp
from sqlalchemy import select

from dicomnode.net import status as st
from dicomnode.storage.db import open_database
from dicomnode.storage.models import Delivery, Instance, Job


class Sender(threading.Thread):
    """One association; sends ``files`` in order, ``pause`` apart, keeps every status."""

    def __init__(self, port: int, files: list[Path], pause: float) -> None:
        super().__init__(daemon=True)
        self.port, self.files, self.pause = port, files, pause
        self.statuses: dict[str, int | None] = {}
        self.seconds: dict[str, float] = {}  # how long each answer took
        self.sent = threading.Event()  # set after each answer

    def run(self) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MRImageStorage)
        ae.dimse_timeout = ae.network_timeout = 120
        assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
        assert assoc.is_established
        try:
            for path in self.files:
                sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                t0 = time.monotonic()
                rsp = assoc.send_c_store(path)
                self.seconds[sop] = time.monotonic() - t0
                self.statuses[sop] = int(rsp.Status) if rsp and "Status" in rsp else None
                self.sent.set()
                time.sleep(self.pause)
        finally:
            assoc.release()

    def count(self) -> int:
        return len(self.statuses)


def _hold_sqlite_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding the SQLite write lock until its stdin closes."""
    code = ("import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
            "c.execute('ROLLBACK')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _wait_count(sender: Sender, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sender.count() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sender.count() >= n, f"only {sender.count()} of {n} answers after {timeout} s"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sqlite-locked", "postgresql-restarted"])
def test_index_unavailable_mid_load_answers_out_of_resources_and_resumes(
        fault: str, delivering_node: Any, wait_for: Any, request: pytest.FixtureRequest,
        tmp_path: Path) -> None:
    node_settings: dict[str, Any] = {}
    if fault == "postgresql-restarted":
        pg = request.getfixturevalue("postgres")
        node_settings["database_url"] = request.getfixturevalue("pg_database_url")
    pacs_port = free_port()
    study, series = uid(), uid()
    files = [write(make_dataset(study_uid=study, series_uid=series, SeriesDescription="echo outage",
                                rows=16, columns=16, InstanceNumber=i + 1), tmp_path / f"{i}.dcm")
             for i in range(60)]
    pacs: list[str] = []
    with storage_scp({}, pacs_port, pacs):
        node = delivering_node(pacs_port, "TESTSCP", **node_settings)
        url = node_settings.get("database_url") or f"sqlite:///{node.data_dir / 'index.sqlite'}"
        db = open_database(url, fsync=False, upgrade=False)
        try:
            sender = Sender(node.port, files, pause=0.1)
            sender.start()
            _wait_count(sender, 10, 60)
            down_at = sender.count()  # answered before the fault: all must be successes
            if fault == "sqlite-locked":
                holder = _hold_sqlite_lock(node.data_dir / "index.sqlite")
                time.sleep(35)  # longer than the node's 30 s busy timeout
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(30)
            else:
                pg.stop("fast")
                time.sleep(4)
                pg.start()
                pg.wait_ready()
            up_at = sender.count()
            sender.join(180)
            assert not sender.is_alive()

            statuses = sender.statuses
            assert len(statuses) == len(files) and None not in statuses.values()  # all answered
            refused = {s for s, code in statuses.items() if code != st.SUCCESS}
            assert refused, "the outage must refuse something"
            assert all(statuses[s] & 0xFF00 == 0xA700 for s in refused), statuses  # out of resources
            # Answered within about one busy timeout (30 s on SQLite), not the sender's patience.
            slowest = max(sender.seconds.values())
            assert slowest < (40 if fault == "sqlite-locked" else 10), f"an answer took {slowest:.0f} s"
            print(f"{fault}: {len(refused)} of {len(files)} refused 0x{max(statuses.values()):04X}, "
                  f"slowest answer {slowest:.1f} s")
            order = list(statuses)
            assert all(s not in refused for s in order[:down_at])
            assert all(s not in refused for s in order[up_at + 2:]), "receiving did not resume"
            with db.session() as s:
                indexed = set(s.scalars(select(Instance.sop_instance_uid)))
            assert indexed == set(statuses) - refused  # exactly what was acknowledged
            spool = node.data_dir / "spool"
            stored = [p for p in spool.rglob("*.dcm") if "tmp" not in p.relative_to(spool).parts]
            assert len(stored) == len(indexed)  # a refusal leaves no file behind

            again = Sender(node.port, [files[order.index(s)] for s in refused], pause=0)
            again.run()
            assert set(again.statuses.values()) == {st.SUCCESS}
            with db.session() as s:
                assert set(s.scalars(select(Instance.sop_instance_uid))) == set(statuses)

            def done() -> bool:
                with db.session() as s:
                    jobs = s.scalars(select(Job)).all()
                    rows = s.scalars(select(Delivery)).all()
                return bool(jobs) and all(j.state in ("done", "cancelled") for j in jobs) \
                    and any(j.state == "done" for j in jobs) and bool(rows) \
                    and all(r.state == "delivered" for r in rows)

            wait_for(done, 120, "the series' job done and its results delivered")
            with db.session() as s:
                results = {r for r in s.scalars(select(Delivery.result_fk))}
            assert len(pacs) >= len(results)
        finally:
            db.dispose()
    assert node.stop() == 0  # still a healthy node: a clean shutdown
