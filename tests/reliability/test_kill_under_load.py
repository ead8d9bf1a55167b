"""kill -9 of the node, three times, while four associations write to the index at once.

``tests/net/test_durability.py`` kills the node under one ``storescu``; here four
parallel dcmtk ``storescu`` streams keep the index's writer busy (SQLite, fsync on,
as shipped) and the node is killed at three different moments, restarted on the
same data directory each time, once the index has grown by 15, 60 and 120 rows.  After every restart:

- every instance a ``storescu`` saw acknowledged (``Received Store Response
  (Success)``) has its index row, and its spool file has the recorded size and sha256;
- no half-received file is left in the spool's temporary directory.

At the end every file of every cycle is sent once more: all are answered success,
the index holds each SOP Instance UID exactly once, and every spool file is
referenced by exactly one index row (none left over from a kill between the file's
rename and its index commit).
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import dcmtk
from dicom_factory import mr_series
from sqlalchemy import func, select

from dicomnode.storage.db import open_database
from dicomnode.storage.models import Instance

STREAMS, PER_STREAM = 4, 60


def _push(port: int, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aet", "LOADSCU", "-aec", "DICOMNODE", "127.0.0.1", str(port),
         *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _acknowledged(output: str) -> list[str]:
    """Files whose C-STORE storescu saw answered Success (``-v`` logs both lines)."""
    done, current = [], None
    for line in output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
    return done


def _count(db: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count(Instance.id))) or 0)


@pytest.mark.slow
def test_kill_9_three_times_under_parallel_load_loses_nothing_acknowledged(
        node_factory: Any, tmp_path: Path) -> None:
    node = node_factory(name="loaded")
    sop_of: dict[str, str] = {}
    acknowledged: set[str] = set()
    db = open_database(f"sqlite:///{node.data_dir / 'index.sqlite'}", fsync=False, upgrade=False)
    spool = node.data_dir / "spool"
    try:
        for cycle, grown in enumerate((15, 60, 120)):
            streams = [mr_series(tmp_path / f"c{cycle}s{i}", n=PER_STREAM, rows=64, columns=64)
                       for i in range(STREAMS)]
            for files in streams:
                sop_of.update({str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                               for f in files})
            before = _count(db)
            procs = [_push(node.port, files) for files in streams]
            deadline = time.monotonic() + 120
            while _count(db) < before + grown and time.monotonic() < deadline:
                time.sleep(0.02)
            node.kill()  # SIGKILL with four associations mid-stream
            outputs = [p.communicate(timeout=120)[0] for p in procs]
            acked = {sop_of[f] for out in outputs for f in _acknowledged(out)}
            assert 0 < len(acked) < STREAMS * PER_STREAM, f"cycle {cycle}: the kill must land mid-load"
            acknowledged |= acked

            node.start()
            with db.session() as s:
                rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
            lost = acknowledged - set(rows)
            assert not lost, f"cycle {cycle}: {len(lost)} acknowledged instances lost"
            for sop, row in rows.items():
                data = (spool / row.path).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (row.size, row.sha256), sop
            assert list((spool / "tmp").iterdir()) == []
            print(f"cycle {cycle}: killed with {len(acked)} acknowledged this cycle, "
                  f"{len(rows)} rows after restart, {len(acknowledged)} acknowledged in all")

        everything = list(sop_of)
        again = [_push(node.port, everything[i::STREAMS]) for i in range(STREAMS)]
        for proc, part in zip(again, (everything[i::STREAMS] for i in range(STREAMS)), strict=True):
            out = proc.communicate(timeout=300)[0]
            assert proc.returncode == 0 and len(_acknowledged(out)) == len(part), out[-2000:]
        with db.session() as s:
            uids = list(s.scalars(select(Instance.sop_instance_uid)))
            paths = set(s.scalars(select(Instance.path)))
        assert sorted(uids) == sorted(sop_of.values())  # each once
        on_disk = {str(p.relative_to(spool)) for p in spool.rglob("*.dcm")
                   if "tmp" not in p.relative_to(spool).parts}
        assert on_disk == paths, f"{len(on_disk - paths)} spool files without an index row"
    finally:
        db.dispose()
