"""Crash safety and bounded memory: kill -9 mid-push, a 2 GB instance, allowlists."""
from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import NodeProcess, dcmtk, storescu
from dicom_factory import make_dataset, mr_series, write
from pydicom.uid import XRayAngiographicImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification


def index_rows(node: NodeProcess) -> dict[str, tuple[str, int, str]]:
    con = sqlite3.connect(node.data_dir / "index.sqlite")
    rows = con.execute("select sop_instance_uid, path, size, sha256 from instance").fetchall()
    con.close()
    return {sop: (path, size, sha) for sop, path, size, sha in rows}


def test_kill_9_while_storescu_sends_loses_nothing_acknowledged(node: NodeProcess, tmp_path: Path) -> None:
    files = mr_series(tmp_path / "push", n=300, rows=256, columns=256)
    by_file = {str(f): pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    proc = subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aec", "DICOMNODE", "127.0.0.1", str(node.port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(1.5)
    node.kill()  # SIGKILL: no clean-up of any kind
    out, _ = proc.communicate(timeout=60)

    # storescu -v logs "Sending file: X" then "Received Store Response (Success)".
    acknowledged: list[str] = []
    current = None
    for line in out.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acknowledged.append(by_file[current])
    assert 0 < len(acknowledged) < len(files), "the kill must land mid-push"

    node.start()  # restart on the same data directory
    rows = index_rows(node)
    for sop in acknowledged:
        assert sop in rows, f"acknowledged instance {sop} lost"
    spool = node.data_dir / "spool"
    for sop, (path, size, sha) in rows.items():
        data = (spool / path).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        assert pydicom.dcmread(spool / path).SOPInstanceUID == sop
    assert list((spool / "tmp").iterdir()) == []  # partial receive files cleaned at start


def _big_xa(path: Path, frames: int, rows: int = 1024, columns: int = 1024) -> Path:
    """A multi-frame 8-bit XA written frame by frame (the test itself stays small in RAM)."""
    ds = make_dataset(XRayAngiographicImageStorage, modality="XA", bits=8, rows=8, columns=8)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    del ds.PixelData
    write(ds, path)
    frame = np.arange(rows * columns, dtype=np.uint32).astype(np.uint8).tobytes()
    length = rows * columns * frames
    with open(path, "ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        for i in range(frames):
            fh.write(frame[i % 7:] + frame[: i % 7])
    return path


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_2gb_instance_is_received_with_bounded_memory(node: NodeProcess, tmp_path: Path) -> None:
    path = _big_xa(tmp_path / "big.dcm", frames=2000)  # 2.1 GB of pixel data
    assert path.stat().st_size > 2_000_000_000
    assert node.proc is not None
    before = _peak_rss_mb(node.proc.pid)
    res = storescu(node.port, path, timeout=900)
    assert res.returncode == 0, res.stderr
    peak = _peak_rss_mb(node.proc.pid)
    print(f"node peak RSS {peak:.0f} MB (before the push {before:.0f} MB)")
    # Issue #10's target for the receiving process (the worker role runs in a child).
    assert peak <= 100, f"peak RSS {peak:.0f} MB (before the push {before:.0f} MB)"
    [(rel, size, sha)] = index_rows(node).values()
    stored = node.data_dir / "spool" / rel

    def digest(p: Path) -> str:
        # Compare the data set bytes (after the file meta) in 64 MB chunks.
        data = p.read_bytes()[:200]
        start = 144 + int.from_bytes(data[140:144], "little")
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            fh.seek(start)
            while chunk := fh.read(64 << 20):
                h.update(chunk)
        return h.hexdigest()

    assert digest(stored) == digest(path)
    stored.unlink()
    path.unlink()


def test_unknown_calling_ae_is_rejected_at_association(node_factory) -> None:
    node = node_factory(config={"node": {"allowed_calling": ["MODALITY1", "PACS@127.0.0.1"]}})
    ok = subprocess.run([dcmtk("echoscu"), "-aet", "MODALITY1", "-aec", "DICOMNODE", "127.0.0.1",
                         str(node.port)], capture_output=True, text=True)
    bad = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "DICOMNODE", "127.0.0.1",
                          str(node.port)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode != 0 and "Association Rejected" in bad.stderr


def test_known_ae_from_an_unknown_address_is_rejected(node_factory) -> None:
    node = node_factory(config={"node": {"allowed_calling": ["PACS@127.0.0.1"]}})

    def echo_from(address: str) -> bool:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE", bind_address=(address, 0))
        established = assoc.is_established
        if established:
            assoc.release()
        return established

    assert echo_from("127.0.0.1")
    assert not echo_from("127.0.0.2")  # same AE title, other peer address


def test_associations_beyond_the_maximum_are_rejected_not_hung(node_factory) -> None:
    node = node_factory(config={"node": {"max_associations": 2}})
    held = []
    for _ in range(2):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert assoc.is_established
        held.append(assoc)
    start = time.perf_counter()
    res = subprocess.run([dcmtk("echoscu"), "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Association Rejected" in res.stderr
    assert time.perf_counter() - start < 5
    for assoc in held:
        assoc.release()
