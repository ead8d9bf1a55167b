"""Every row of node.md's bad-input table: the right status, one log line, nothing harmed.

Files are sent raw (pynetdicom's chunked send puts the file's bytes on the wire as
they are, so broken data sets reach the node unparsed).  Before each case a good
study is stored; after it, that study's files and rows must be unchanged, and no
file may exist outside the spool.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import NodeProcess, storescu
from dicom_factory import make_dataset, mr_series, uid, write
from fuzz.harness import lenient_writing
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import AE, _config

OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def send_raw(port: int, path: Path, sop_class: str | None = None) -> int | None:
    """C-STORE the file's bytes as they are; return the status (None: no response)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(sop_class or meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert assoc.is_established
        rsp = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return int(rsp.Status) if rsp and "Status" in rsp else None


def snapshot(node: NodeProcess) -> dict[str, str]:
    """Every spool file (outside tmp/) with its sha256, and the index rows."""
    files = {
        str(p.relative_to(node.data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (node.data_dir / "spool").rglob("*")
        if p.is_file() and "tmp" not in p.relative_to(node.data_dir / "spool").parts[:1]
    }
    con = sqlite3.connect(node.data_dir / "index.sqlite")
    rows = con.execute("select sop_instance_uid, path, sha256 from instance order by 1").fetchall()
    con.close()
    files["__rows__"] = json.dumps(rows)
    return files


@pytest.fixture
def baseline(node: NodeProcess, tmp_path: Path) -> dict[str, str]:
    """A good study already stored; its snapshot."""
    res = storescu(node.port, *mr_series(tmp_path / "good", n=3))
    assert res.returncode == 0
    return snapshot(node)


def assert_untouched(node: NodeProcess, before: dict[str, str], tmp_path: Path) -> None:
    assert snapshot(node) == before
    # Nothing written from received data outside the spool (hostile UIDs would try).
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and node.data_dir not in p.parents
               and p.parent.name not in ("good", "bad") and p.suffix not in (".toml", ".log")]
    assert outside == []


def refusal_lines(node: NodeProcess) -> list[str]:
    return [line for line in node.log().splitlines() if "refused" in line]


@pytest.mark.parametrize(
    "attribute",
    ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"],
)
def test_hostile_uid_is_refused_cannot_understand(
    node: NodeProcess, baseline: dict[str, str], tmp_path: Path, attribute: str
) -> None:
    ds = make_dataset()
    with lenient_writing():
        setattr(ds, attribute, "../../x")
        path = write(ds, tmp_path / "bad" / "hostile.dcm")
    assert send_raw(node.port, path) == CANNOT_UNDERSTAND
    assert_untouched(node, baseline, tmp_path)
    lines = refusal_lines(node)
    assert len(lines) == 1 and "0xC000" in lines[0] and attribute in lines[0]


@pytest.mark.parametrize("bad_uid", ["1.2.03.4", "1..2", "1.2.3." + "4" * 70, "1.2.a"])
def test_uids_breaking_ps3_5_are_refused(node: NodeProcess, tmp_path: Path, bad_uid: str) -> None:
    ds = make_dataset()
    with lenient_writing():
        ds.StudyInstanceUID = bad_uid
        path = write(ds, tmp_path / "bad" / "uid.dcm")
    assert send_raw(node.port, path) == CANNOT_UNDERSTAND


def test_missing_study_uid_is_refused(node: NodeProcess, baseline: dict[str, str], tmp_path: Path) -> None:
    ds = make_dataset()
    del ds.StudyInstanceUID
    path = write(ds, tmp_path / "bad" / "nostudy.dcm")
    assert send_raw(node.port, path) == CANNOT_UNDERSTAND
    assert_untouched(node, baseline, tmp_path)


@pytest.mark.parametrize("cut", [0.5, 0.02])
def test_truncated_data_set_is_refused(
    node: NodeProcess, baseline: dict[str, str], tmp_path: Path, cut: float
) -> None:
    good = write(make_dataset(rows=128, columns=128), tmp_path / "bad" / "whole.dcm")
    data = good.read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    truncated = tmp_path / "bad" / "truncated.dcm"
    truncated.write_bytes(data[: meta_end + int((len(data) - meta_end) * cut)])
    assert send_raw(node.port, truncated) == CANNOT_UNDERSTAND
    assert_untouched(node, baseline, tmp_path)


def test_data_set_of_another_sop_class_than_its_context_is_refused(
    node: NodeProcess, baseline: dict[str, str], tmp_path: Path
) -> None:
    path = write(make_dataset(sop_class=CTImageStorage, modality="CT"), tmp_path / "bad" / "mismatch.dcm")
    # pydicom keeps the file meta in step with the data set, so patch the meta's bytes:
    # the file (and so the presentation context) says MR, the data set says CT.
    data = path.read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    assert len(CTImageStorage) == len(MRImageStorage)
    meta = data[:meta_end].replace(CTImageStorage.encode(), MRImageStorage.encode())
    path.write_bytes(meta + data[meta_end:])
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPClassUID == MRImageStorage
    assert send_raw(node.port, path) == MISMATCH
    assert_untouched(node, baseline, tmp_path)


def test_same_instance_with_identical_bytes_is_stored_once(node: NodeProcess, tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "bad" / "dup.dcm")
    assert send_raw(node.port, path) == 0
    before = snapshot(node)
    assert send_raw(node.port, path) == 0
    assert snapshot(node) == before


def test_same_instance_with_other_bytes_keeps_the_newest_by_default(node: NodeProcess, tmp_path: Path) -> None:
    sop = uid()
    first = write(make_dataset(sop_uid=sop, seed=1), tmp_path / "bad" / "v1.dcm")
    second = write(make_dataset(sop_uid=sop, seed=2), tmp_path / "bad" / "v2.dcm")
    assert send_raw(node.port, first) == 0
    assert send_raw(node.port, second) == 0
    con = sqlite3.connect(node.data_dir / "index.sqlite")
    [(path, sha)] = con.execute("select path, sha256 from instance").fetchall()
    stored = node.data_dir / "spool" / path
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(second).PixelData
    # The replaced file is gone: one instance, one file.
    spool = node.data_dir / "spool"
    files = [p for p in spool.rglob("*.dcm") if p.relative_to(spool).parts[0] != "tmp"]
    assert files == [stored]
    assert "replaced" in node.log()


def test_same_instance_with_other_bytes_is_refused_under_reject_policy(node_factory, tmp_path: Path) -> None:
    node = node_factory(config={"node": {"duplicate_policy": "reject"}})
    sop = uid()
    assert send_raw(node.port, write(make_dataset(sop_uid=sop, seed=1), tmp_path / "bad" / "v1.dcm")) == 0
    before = snapshot(node)
    assert send_raw(node.port, write(make_dataset(sop_uid=sop, seed=2), tmp_path / "bad" / "v2.dcm")) == MISMATCH
    assert snapshot(node) == before


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs for the spool (a real full disk; root can mount one)."""
    mount = tmp_path / "smallfs"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (run as root): {res.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_out_of_resources_and_recovers(node_factory, small_spool: Path, tmp_path: Path) -> None:
    node = node_factory(config={"node": {"spool_dir": str(small_spool), "min_free_bytes": 0}})
    files = mr_series(tmp_path / "bad", n=8, rows=256, columns=256)  # 128 kB each
    big = write(make_dataset(rows=1024, columns=1024, frames=2), tmp_path / "bad" / "big.dcm")  # 4 MB
    assert send_raw(node.port, files[0]) == 0
    assert send_raw(node.port, big) == OUT_OF_RESOURCES  # does not fit: refused, not crashed
    assert list((small_spool / "tmp").iterdir()) == []  # the partial file was removed
    for f in files[1:]:  # receiving goes on for what fits
        assert send_raw(node.port, f) == 0
    con = sqlite3.connect(node.data_dir / "index.sqlite")
    assert con.execute("select count(*) from instance").fetchone()[0] == 8
    assert node.proc is not None and node.proc.poll() is None
    assert any("0xA700" in line for line in refusal_lines(node))
