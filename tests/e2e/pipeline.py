"""The whole path as a user runs it: synthetic studies → storescu → ``dicomnode run`` → Orthanc.

Shared by the end-to-end tests (``tests/e2e``) and the latency and load benchmarks
(``bench/latency.py``, ``bench/load.py``), so that what the benchmarks time is
exactly what the tests check:

- :func:`synth` writes studies with ``dicomnode synth MODULE`` (a subprocess);
- :class:`Templates` gives fresh copies of written studies (new Study/Series/SOP
  UIDs, pixels untouched), so a benchmark can push hundreds of distinct studies
  without rendering each one;
- :func:`push` sends files over one association with dcmtk's ``/usr/bin/storescu``
  and returns the moment the last instance was acknowledged;
- :class:`NodeIndex` reads the node's own index (jobs, results, deliveries);
- :func:`orthanc_objects` reads back what Orthanc holds in a study.

Times from the index are the node's (naive UTC); :func:`push` returns the same
clock (``time.time()``), both on this machine.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

#: SOP Classes of the objects the node sends back.
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_CLASSES = (COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR)
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SC_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4")
#: A root of our own for re-UIDed copies (tests/dicom_factory uses .9.).
COPY_ROOT = "1.2.826.0.1.3680043.10.1495.11."


def node_config(orthanc: Any, *, series_quiet: float = 1.0, study_quiet: float = 2.0,
                sweep: float = 0.25, fsync: bool = True, **jobs: Any) -> dict[str, Any]:
    """A ``dicomnode run`` config with short quiet periods and ``orthanc`` as destination.

    ``jobs`` overrides ``[jobs]`` keys (default: one worker, one torch thread).
    """
    return {
        "node": {"fsync": fsync},
        "routing": {"series_quiet_seconds": series_quiet, "study_quiet_seconds": study_quiet,
                    "sweep_seconds": sweep},
        "jobs": {"workers": 1, "max_attempts": 2, "retry_backoff_seconds": [1],
                 "torch_threads": 1, **jobs},
        "delivery": {"retry_backoff_seconds": [1, 2, 5]},
        "destinations": [{"name": "pacs", "aetitle": orthanc.aetitle, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
    }


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def synth(module: str, out: Path, n: int, seed: int) -> subprocess.Popen[str]:
    """Start ``dicomnode synth MODULE --out OUT --n N --seed S``; :func:`finish_synth` waits."""
    return subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli.main", "synth", module, "--out", str(out),
         "--n", str(n), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish_synth(proc: subprocess.Popen[str], out: Path, timeout: float = 600) -> list[Path]:
    """Wait for a :func:`synth` process; the DICOM files it wrote, sorted."""
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"dicomnode synth exited {proc.returncode}:\n{output[-3000:]}")
    return sorted(out.rglob("*.dcm"))


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def by_study(files: Iterable[Path]) -> dict[str, list[Path]]:
    """Files grouped by their Study Instance UID (in the order given)."""
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(str(header(f).StudyInstanceUID), []).append(f)
    return out


def _remap(ds: Dataset, mapping: dict[str, str]) -> None:
    """Replace every UI value found in ``mapping``, nested sequences included."""
    for elem in ds.iterall():
        if elem.VR != "UI" or elem.value is None:
            continue
        if isinstance(elem.value, str) and elem.value in mapping:
            elem.value = mapping[elem.value]
        elif isinstance(elem.value, list | pydicom.multival.MultiValue):
            elem.value = [mapping.get(str(v), v) for v in elem.value]


@dataclass
class Templates:
    """Studies read once; :meth:`copy` writes a fresh copy of one under new UIDs.

    Every Study, Series, SOP Instance and Frame of Reference UID of the study is
    replaced consistently (references between its instances, e.g. a biplane run's
    partner, stay valid); pixels and all other attributes are kept, so the copy
    routes and predicts exactly like the original.
    """

    studies: dict[str, list[bytes]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, files: Sequence[Path]) -> list[str]:
        """Read ``files`` (one or more studies) as templates of ``kind``; their study UIDs."""
        uids = []
        for study, paths in by_study(files).items():
            self.studies[study] = [p.read_bytes() for p in paths]
            self.kinds[study] = kind
            uids.append(study)
        return uids

    def copy(self, study: str, out: Path) -> tuple[str, list[Path]]:
        """Write a copy of template ``study`` under ``out``; its new study UID and files."""
        datasets = [pydicom.dcmread(io.BytesIO(raw)) for raw in self.studies[study]]
        mapping: dict[str, str] = {}
        for ds in datasets:
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                            "FrameOfReferenceUID"):
                old = ds.get(keyword)
                if old and str(old) not in mapping:
                    mapping[str(old)] = generate_uid(prefix=COPY_ROOT)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, ds in enumerate(datasets):
            _remap(ds, mapping)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = out / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return mapping[study], paths


# ---------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------


def push(port: int, files: Sequence[Path], aetitle: str = "DICOMNODE",
         calling: str = "MODALITY", timeout: float = 600) -> float:
    """C-STORE ``files`` over one association (dcmtk storescu, Nagle off).

    Returns the time (``time.time()``) storescu exited: its last C-STORE was
    acknowledged and the association released.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk: no Nagle delay on the last PDU
    res = subprocess.run(["/usr/bin/storescu", "-aet", calling, "-aec", aetitle, "127.0.0.1",
                          str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    acked = time.time()
    if res.returncode != 0:
        raise RuntimeError(f"storescu exited {res.returncode}: {res.stderr[-2000:]}")
    return acked


# ---------------------------------------------------------------------------
# The node's index
# ---------------------------------------------------------------------------


def epoch(value: dt.datetime | None) -> float | None:
    """A naive-UTC index timestamp as ``time.time()`` seconds."""
    return None if value is None else value.replace(tzinfo=dt.UTC).timestamp()


@dataclass
class StudyOutcome:
    """What the node did with one study: its jobs, results and deliveries."""

    study_instance_uid: str
    state: str
    completed_at: float | None
    #: Latest instance received and latest series started, of the pushed (not result) series.
    last_received_at: float | None
    last_series_added_at: float | None
    jobs: list[dict[str, Any]]
    results: list[dict[str, Any]]

    @property
    def settled(self) -> bool:
        """Routed, every job ended and every result delivered (or failed)."""
        if self.state != "routed":
            return False
        if any(j["state"] not in ("done", "failed") for j in self.jobs):
            return False
        return all(r["deliveries"] and all(d["state"] in ("delivered", "failed")
                                           for d in r["deliveries"]) for r in self.results)


class NodeIndex:
    """Read-only queries on a node's SQLite index (the node keeps writing it)."""

    def __init__(self, data_dir: Path) -> None:
        from dicomnode.storage.db import open_database

        self.db = open_database(f"sqlite:///{data_dir / 'index.sqlite'}", fsync=False,
                                upgrade=False)

    def close(self) -> None:
        self.db.dispose()

    def outcomes(self, studies: Iterable[str]) -> dict[str, StudyOutcome]:
        """The current outcome of each study the node knows (absent ones are left out)."""
        from sqlalchemy import select

        from dicomnode.storage.models import Delivery, Job, Result, Series, Study

        wanted = list(studies)
        out: dict[str, StudyOutcome] = {}
        with self.db.session() as s:
            for chunk in (wanted[i:i + 400] for i in range(0, len(wanted), 400)):
                rows = s.scalars(select(Study).where(Study.study_instance_uid.in_(chunk))).all()
                # Results are indexed into the study too: take the times of pushed series only.
                sources: dict[int, list[Series]] = {}
                for se in s.scalars(select(Series).where(
                        Series.study_fk.in_([st.id for st in rows]), Series.is_result.is_(False))):
                    sources.setdefault(se.study_fk, []).append(se)
                jobs = s.scalars(select(Job).where(Job.study_instance_uid.in_(chunk))
                                 .order_by(Job.id)).all()
                results = s.scalars(select(Result).where(Result.study_instance_uid.in_(chunk))
                                    .order_by(Result.id)).all()
                deliveries: dict[int, list[Delivery]] = {}
                if results:
                    for d in s.scalars(select(Delivery).where(
                            Delivery.result_fk.in_([r.id for r in results]))):
                        deliveries.setdefault(d.result_fk, []).append(d)
                for st in rows:
                    uid = st.study_instance_uid
                    pushed = sources.get(st.id, [])
                    out[uid] = StudyOutcome(
                        uid, st.state, epoch(st.completed_at),
                        max((epoch(se.last_received_at) or 0.0 for se in pushed), default=None),
                        max((epoch(se.first_received_at) or 0.0 for se in pushed), default=None),
                        [{"id": j.id, "module": j.module, "rule": j.rule, "state": j.state,
                          "error": j.error, "reason": j.reason, "series_uids": list(j.series_uids),
                          "created_at": epoch(j.created_at), "started_at": epoch(j.started_at),
                          "finished_at": epoch(j.finished_at), "timings": dict(j.timings or {}),
                          "summary": dict(j.summary or {})}
                         for j in jobs if j.study_instance_uid == uid],
                        [{"id": r.id, "job": r.job_fk, "module": r.module, "kind": r.kind,
                          "sop_instance_uid": r.sop_instance_uid, "superseded_by": r.superseded_by,
                          "deliveries": [{"state": d.state, "destination": d.destination,
                                          "attempts": d.attempts,
                                          "delivered_at": epoch(d.delivered_at)}
                                         for d in deliveries.get(r.id, [])]}
                         for r in results if r.study_instance_uid == uid],
                    )
        return out

    def wait_settled(self, studies: Iterable[str], timeout: float,
                     on_poll: Callable[[], None] | None = None) -> dict[str, StudyOutcome]:
        """Poll until every study is routed, its jobs ended and its results delivered."""
        wanted = set(studies)
        deadline = time.monotonic() + timeout
        outcomes: dict[str, StudyOutcome] = {}
        while time.monotonic() < deadline:
            outcomes = self.outcomes(wanted)
            if len(outcomes) == len(wanted) and all(o.settled for o in outcomes.values()):
                return outcomes
            if on_poll is not None:
                on_poll()
            time.sleep(0.2)
        pending = {u: (o.state, [(j["module"], j["state"]) for j in o.jobs])
                   for u, o in outcomes.items() if not o.settled}
        missing = wanted - set(outcomes)
        raise TimeoutError(f"not settled after {timeout:g} s: {len(pending)} pending {pending}; "
                           f"{len(missing)} never indexed")


# ---------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------


def orthanc_objects(orthanc: Any, study_uid: str) -> list[Dataset]:
    """Every instance Orthanc holds in the study, read back through its REST API."""
    found = orthanc.post("/tools/lookup", study_uid.encode())
    ids = [f["ID"] for f in found if f["Type"] == "Study"]
    if not ids:
        return []
    out = []
    for inst in orthanc.get(f"/studies/{ids[0]}/instances"):
        out.append(pydicom.dcmread(io.BytesIO(orthanc.file(inst["ID"]))))
    return out


def of_class(objects: Iterable[Dataset], classes: Iterable[str]) -> list[Dataset]:
    wanted = set(classes)
    return [ds for ds in objects if str(ds.SOPClassUID) in wanted]


# ---------------------------------------------------------------------------
# For the benchmarks: cached synthetic studies, a node + Orthanc stack, memory
# ---------------------------------------------------------------------------


def cached_synth(module: str, root: Path, n: int, seed: int) -> list[Path]:
    """``dicomnode synth`` output under ``root/<module>-n<N>-s<S>``, written once and reused."""
    out = root / f"{module}-n{n}-s{seed}"
    done = out / ".done"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        finish_synth(synth(module, out, n, seed), out)
        done.touch()
    return sorted(out.rglob("*.dcm"))


class Stack:
    """Orthanc plus a ``dicomnode run`` that sends its results there, under ``workdir``."""

    def __init__(self, workdir: Path, **config: Any) -> None:
        from conftest import NodeProcess, OrthancServer, free_port

        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.orthanc = OrthancServer("ORTHANC", free_port(), free_port(), workdir / "orthanc")
        self.node = NodeProcess(workdir / "node", free_port())
        self.node.data_dir.mkdir()
        self.config = config
        self.index: NodeIndex | None = None

    def __enter__(self) -> Stack:
        self.orthanc.start()
        self.node.config = node_config(self.orthanc, **self.config)
        self.node.start()
        self.index = NodeIndex(self.node.data_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.index is not None:
            self.index.close()
        self.node.stop()
        self.orthanc.stop()

    @property
    def pid(self) -> int:
        assert self.node.proc is not None
        return self.node.proc.pid


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/…/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}").exists() else ():
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


def memory_mb(pid: int) -> dict[int, dict[str, Any]]:
    """VmRSS and VmHWM (peak) in MB of ``pid`` and each descendant, and its role:
    ``node``, ``worker`` (a multiprocessing spawn child) or ``helper`` (e.g. the
    multiprocessing resource tracker)."""
    out: dict[int, dict[str, Any]] = {}
    for p in process_tree(pid):
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{p}/status").read_text().splitlines() if ":" in line)
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = "node" if p == pid else "worker" if "spawn_main" in cmdline else "helper"
        out[p] = {"rss": int(fields.get("VmRSS", "0 kB").split()[0]) / 1024,
                  "hwm": int(fields.get("VmHWM", "0 kB").split()[0]) / 1024, "role": role}
    return out
