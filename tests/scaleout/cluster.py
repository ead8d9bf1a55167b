"""Two (or more) ``dicomnode run`` processes on one PostgreSQL index and one spool.

Shared by the scale-out test and ``measure_throughput.py``.  Each node runs under
``unshare --uts`` with a host name of its own, so the nodes behave like separate
hosts: a lease owner ``host:pid:token`` of the other node is never checked by pid,
and a dead node's job comes back only when its lease expires (as across machines).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import NodeProcess, poll_until, storescu
from dicom_factory import make_dataset, uid, write

SUPPORT = Path(__file__).with_name("support")
JOBS_SUPPORT = Path(__file__).parent.parent / "jobs" / "support"

RULES = """
[[rules]]
name = "to-sleepy"
modules = ["sleepy"]
[rules.match]
series_description = { regex = "^sleepy" }
"""


def module_env(root: Path) -> dict[str, str]:
    """Declare ``sleepy`` as a ``dicomnode.modules`` entry point and give it a model version."""
    import torch

    sys.path[:0] = [str(SUPPORT), str(JOBS_SUPPORT)]
    try:
        import dicomnode_scaleout as sm
    finally:
        sys.path.remove(str(SUPPORT))
        sys.path.remove(str(JOBS_SUPPORT))
    from ai.core.models import save_model_version

    dist = root / "site" / "dicomnode_scaleout-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dicomnode-scaleout\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[dicomnode.modules]\n" + "".join(f"{k} = {v}\n" for k, v in sm.ENTRY_POINTS.items()))
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    save_model_version(root / "models" / "sleepy", "sleepy", net, {"network": {}}, version="test-1",
                       command="tests/scaleout/cluster.py")
    (root / "rules.toml").write_text(RULES)
    return {"PYTHONPATH": f"{root / 'site'}:{SUPPORT}:{JOBS_SUPPORT}",
            "DICOMNODE_TESTMODULE_MODELS": str(root / "models"),
            "DICOMNODE_TESTMODULE_MARKS": str(root / "marks.txt")}


def create_database(server_url: str, name: str) -> str:
    """A fresh database on the PostgreSQL server; returns its URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class HostNode(NodeProcess):
    """``dicomnode run`` in a UTS namespace of its own (its own host name)."""

    hostname: str = "node"

    def start(self, wait: bool = True) -> None:
        self.write_config()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", f'hostname {self.hostname} && exec "$@"', "sh",
             sys.executable, "-m", "dicomnode.cli.main", "-v", "run",
             "--config", str(self.config_path), "--data-dir", str(self.data_dir),
             "--aetitle", self.aetitle, "--port", str(self.port), "--bind", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        if wait:
            self.wait_listening(offset)


def node_config(database_url: str, spool: Path, rules: Path, dest_port: int, metrics_port: int,
                lease_seconds: float, workers: int = 1) -> dict[str, Any]:
    """One node of the cluster: shared index and spool, short quiet periods, a short lease."""
    return {
        "node": {"fsync": False, "database_url": database_url, "spool_dir": str(spool)},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 1, "sweep_seconds": 0.5,
                    "rules_file": str(rules)},
        "jobs": {"workers": workers, "max_attempts": 3, "retry_backoff_seconds": [1, 2],
                 "job_timeout_seconds": 120, "torch_threads": 1, "lease_seconds": lease_seconds},
        "delivery": {"retry_backoff_seconds": [1, 2]},
        "metrics": {"port": metrics_port, "bind": "127.0.0.1"},
        "destinations": [{"name": "pacs", "aetitle": "ORTHANC", "host": "127.0.0.1", "port": dest_port}],
    }


def write_studies(directory: Path, n: int, seconds: float) -> list[tuple[str, Path]]:
    """``n`` one-instance studies whose series ask ``sleepy`` for ``seconds``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        study = uid()
        ds = make_dataset(study_uid=study, rows=16, columns=16, seed=i,
                          SeriesDescription=f"sleepy {seconds:g}", StudyDescription="scale-out")
        out.append((study, write(ds, directory / f"{i:04d}.dcm")))
    return out


def push(port: int, files: list[Path]) -> None:
    """One storescu association carrying ``files``; every C-STORE must succeed."""
    res = storescu(port, *files, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def marks(path: Path) -> list[tuple[str, int, int, str, float]]:
    """(what, worker pid, node pid, study UID, time) per line the module wrote."""
    if not path.exists():
        return []
    return [(p[0], int(p[1]), int(p[2]), p[3], float(p[4]))
            for p in (line.split() for line in path.read_text().splitlines()) if len(p) == 5]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The node's ``/metrics``: (sample name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as rsp:
        text = rsp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def advisory_holders(database_url: str) -> list[int]:
    """Client ports of the sessions holding the scheduler's advisory lock in that database."""
    from sqlalchemy import create_engine, text

    from dicomnode.jobs.lock import ADVISORY_KEY

    key = ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid = :hi AND l.objid = :lo"), {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).all()
    finally:
        engine.dispose()
    return [int(r[0]) for r in rows]


def ancestor_in(pid: int | None, candidates: Iterable[int]) -> int | None:
    """``pid`` or its nearest ancestor among ``candidates`` (walking /proc/<pid>/stat).

    ``dicomnode run`` runs its worker role (scheduler, worker pool) in a child process,
    so the process holding the scheduler lock or running a job is a descendant of the
    node process the test started, not that process itself.
    """
    wanted = set(candidates)
    for _ in range(16):
        if pid is None or pid <= 1:
            return None
        if pid in wanted:
            return pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)" and state
    return None


def pid_of_local_port(port: int) -> int | None:
    """The process whose TCP socket has local port ``port`` (from /proc, no psutil)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid_dir.name)
        except OSError:
            continue
    return None


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """:func:`conftest.poll_until`, polling every half second (the index is remote)."""
    return poll_until(check, timeout, what, interval)


def throughput(db: Any, studies: set[str]) -> dict[str, float]:
    """Jobs of ``studies`` per second: first claim → last job done (index timestamps)."""
    from sqlalchemy import func, select

    from dicomnode.storage.models import Job

    with db.session() as s:
        first, last, n = s.execute(select(func.min(Job.started_at), func.max(Job.finished_at),
                                          func.count(Job.id))
                                   .where(Job.study_instance_uid.in_(studies), Job.state == "done")).one()
    span = (last - first).total_seconds()
    return {"jobs": int(n), "seconds": round(span, 2), "jobs_per_s": round(n / span, 3) if span else 0.0}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
