"""Helpers shared by the fuzz, load and security tests: a long-lived node, raw C-STOREs,
snapshots of everything on disk, the node's memory from /proc.

Starting a node costs seconds on a busy CI machine, so these suites start one per
module (:func:`start_node`) and check after every case that it is still the same
healthy process.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from conftest import NodeProcess, dcmtk, free_port
from hypothesis import HealthCheck, settings
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, RLELossless
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

#: Statuses a C-STORE of arbitrary bytes may legitimately get (node.md §1).
EXPECTED_STATUSES = {0x0000, 0xA700, 0xA900, 0xC000}
PROCESSING_FAILURE = 0x0110


def start_node(base: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
               aetitle: str = "DICOMNODE") -> NodeProcess:
    """A ``dicomnode run`` subprocess on a free port with its data under ``base``."""
    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    node = NodeProcess(data_dir=data_dir, port=free_port(), aetitle=aetitle,
                       config=config or {}, env=env or {})
    node.start()
    return node


def proc_status(pid: int, field: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` memory field in kB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def alive(node: NodeProcess) -> bool:
    return node.proc is not None and node.proc.poll() is None


def echo(port: int, calling: str = "ECHOSCU", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """dcmtk echoscu to the node."""
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", "DICOMNODE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=timeout)


def index_rows(node: NodeProcess) -> dict[str, tuple[str, int, str]]:
    """SOP Instance UID → (spool path, size, sha256) from the index."""
    con = sqlite3.connect(node.data_dir / "index.sqlite", timeout=30)
    try:
        rows = con.execute("select sop_instance_uid, path, size, sha256 from instance").fetchall()
    finally:
        con.close()
    return {sop: (path, size, sha) for sop, path, size, sha in rows}


def events(node: NodeProcess, kind: str | None = None) -> list[dict[str, Any]]:
    """Audit rows (``Event``), oldest first."""
    import json

    con = sqlite3.connect(node.data_dir / "index.sqlite", timeout=30)
    try:
        query = "select kind, calling_ae, peer, study_instance_uid, sop_instance_uid, detail from event"
        rows = con.execute(query + (" where kind = ?" if kind else "") + " order by id",
                           (kind,) if kind else ()).fetchall()
    finally:
        con.close()
    return [{"kind": k, "calling_ae": c, "peer": p, "study_instance_uid": st, "sop_instance_uid": so,
             "detail": json.loads(d) if isinstance(d, str) else d} for k, c, p, st, so, d in rows]


def spool_files(node: NodeProcess) -> list[Path]:
    spool = node.data_dir / "spool"
    return [p for p in spool.rglob("*") if p.is_file() and p.relative_to(spool).parts[0] != "tmp"]


def temp_files(node: NodeProcess) -> list[Path]:
    return [p for p in (node.data_dir / "spool" / "tmp").rglob("*")]


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (a snapshot to compare)."""
    out = {}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and not any(rel.startswith(s) for s in skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_index_matches_spool(node: NodeProcess) -> int:
    """Every indexed file is complete (size and sha256), every spool file indexed; the count."""
    rows = index_rows(node)
    spool = node.data_dir / "spool"
    for sop, (path, size, sha) in rows.items():
        data = (spool / path).read_bytes()
        assert len(data) == size, f"{sop}: {len(data)} bytes on disk, index says {size}"
        assert hashlib.sha256(data).hexdigest() == sha, f"{sop}: content differs from the index"
    on_disk = {str(p.relative_to(spool)) for p in spool_files(node)}
    assert on_disk == {path for path, _, _ in rows.values()}, "spool files and index rows differ"
    return len(rows)


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """A data set's bytes as they go on the wire (no file meta)."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    with lenient_writing():
        write_dataset(buf, ds)
    return buf.getvalue()


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of a fuzz campaign: ``examples`` derandomised examples (CI),
    random ones when ``DICOMNODE_FUZZ_EXAMPLES`` is set; no deadline, no example
    database, no health check (a node round trip is slow by hypothesis's measure)."""
    return settings(max_examples=examples, deadline=None, database=None,
                    derandomize="DICOMNODE_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def lenient_writing() -> Iterator[None]:
    """Let pydicom write (and pynetdicom encode) invalid values such as hostile UIDs."""
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        pydicom.config.settings.writing_validation_mode = mode


def file_with(meta_of: Dataset, dataset: bytes, path: Path) -> Path:
    """A Part 10 file: ``meta_of``'s file meta, then ``dataset`` exactly as given."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    with lenient_writing():
        pydicom.filewriter.write_file_meta_info(buf, meta_of.file_meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + dataset)
    return path


class Sender:
    """C-STOREs raw files over one association, re-associating when the node aborts it.

    pynetdicom's chunked send puts the file's bytes after the meta on the wire as
    they are, so broken data sets reach the node unparsed.
    """

    def __init__(self, port: int, calling: str = "FUZZER", dimse_timeout: float = 30) -> None:
        self.port = port
        self.ae = AE(ae_title=calling)
        self.ae.dimse_timeout = dimse_timeout
        self.ae.acse_timeout = dimse_timeout
        self.ae.network_timeout = dimse_timeout
        # One context per transfer syntax: offered several, the node picks one for us.
        for sop_class in (MRImageStorage, "1.2.840.10008.5.1.4.1.1.2"):  # MR, CT
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless):
                self.ae.add_requested_context(sop_class, syntax)
        self.ae.add_requested_context(Verification)
        self.assoc: Any = None
        self.associations = 0

    def _association(self) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
            assert self.assoc.is_established, "the node refused or ignored an association"
            self.associations += 1
        return self.assoc

    def store(self, path: Path) -> int | None:
        """The status the node answered, or None when the association ended instead."""
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            with lenient_writing():
                rsp = self._association().send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
        if rsp is not None and "Status" in rsp:
            return int(rsp.Status)
        self.assoc = None
        return None

    def echo(self) -> int | None:
        rsp = self._association().send_c_echo()
        return int(rsp.Status) if rsp is not None and "Status" in rsp else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (the node works asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
