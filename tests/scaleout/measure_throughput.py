"""Throughput of one node vs two on one PostgreSQL index (not a test: prints JSON).

    python tests/scaleout/measure_throughput.py [--studies 200] [--seconds 0.2] [--workers 1]

Starts a private PostgreSQL and Orthanc, then, on a fresh database each time, one
``dicomnode run`` and then two (the scale-out test's set-up: shared spool, the
``sleepy`` module sleeping ``--seconds`` per job, results delivered to Orthanc).
Pushes the studies across the receivers, waits until every job is done and every
result delivered, and reports jobs per second (first claim → last job done, from the
index) and where the CPU went: seconds of CPU per job in the node processes (with
their worker processes), PostgreSQL and Orthanc, against the machine's cores and
load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from conftest import OrthancServer, free_port  # noqa: E402
from scaleout.cluster import (  # noqa: E402
    HostNode,
    create_database,
    module_env,
    node_config,
    push,
    throughput,
    wait_for,
    write_studies,
)
from sqlalchemy import select  # noqa: E402
from storage.conftest import PostgresServer, _pg_bin  # noqa: E402

from dicomnode.storage.db import open_database  # noqa: E402
from dicomnode.storage.models import Delivery, Job  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """CPU time of ``pid``, its reaped children, and (recursively) its live children."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if with_children else 0)) / TICK
    if with_children:
        for child in Path("/proc").iterdir():
            if child.name.isdigit():
                try:
                    g = (child / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(g[1]) == pid:
                    total += cpu_seconds(int(child.name))
    return total


def run(n_nodes: int, args: argparse.Namespace, pg: PostgresServer, orthanc: OrthancServer,
        env: dict[str, str], rules: Path, work: Path) -> dict[str, Any]:
    url = create_database(pg.url, f"tp{n_nodes}_{time.monotonic_ns()}")
    nodes = []
    for i in range(n_nodes):
        node = HostNode(data_dir=work / f"n{n_nodes}-{i}", port=free_port(), hostname=f"tp-{i}", env=env,
                        config=node_config(url, work / f"spool{n_nodes}", rules, orthanc.dicom_port,
                                           free_port(), 60, workers=args.workers))
        node.data_dir.mkdir()
        node.start()
        nodes.append(node)
    db = open_database(url, fsync=False)
    pg_pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    try:
        studies = write_studies(work / f"studies{n_nodes}", args.studies, args.seconds)
        cpu0 = {"nodes": sum(cpu_seconds(n.proc.pid) for n in nodes), "postgres": cpu_seconds(pg_pid),
                "orthanc": cpu_seconds(orthanc.proc.pid)}
        load0 = os.getloadavg()[0]
        parts = [studies[i::n_nodes] for i in range(n_nodes)]
        threads = [threading.Thread(target=push, args=(n.port, [p for _, p in part]))
                   for n, part in zip(nodes, parts, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        uids = {s for s, _ in studies}

        def finished() -> bool:
            with db.session() as s:
                states = s.scalars(select(Job.state).where(Job.study_instance_uid.in_(uids))).all()
                pending = s.scalar(select(Delivery.id).where(Delivery.state != "delivered").limit(1))
            return len(states) == len(uids) and set(states) == {"done"} and pending is None
        wait_for(finished, 3600, "every job done and delivered", interval=1.0)
        rate = throughput(db, uids)
        cpu = {"nodes": sum(cpu_seconds(n.proc.pid) for n in nodes) - cpu0["nodes"],
               "postgres": cpu_seconds(pg_pid) - cpu0["postgres"],
               "orthanc": cpu_seconds(orthanc.proc.pid) - cpu0["orthanc"]}
        return {"nodes": n_nodes, **rate,
                "cpu_s_per_job": {k: round(v / len(uids), 3) for k, v in cpu.items()},
                "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    finally:
        for node in nodes:
            node.stop()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.2, help="sleep per job in the module")
    parser.add_argument("--workers", type=int, default=1, help="jobs.workers per node")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomnode-tp-"))
    datadir = Path(tempfile.mkdtemp(prefix="dicomnode-tp-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    pg = PostgresServer(_pg_bin(), datadir, free_port())
    pg.init()
    pg.start()
    orthanc = OrthancServer("ORTHANC", free_port(), free_port(), work / "orthanc")
    orthanc.start()
    try:
        env = module_env(work / "module")
        rules = work / "module" / "rules.toml"
        out = [run(n, args, pg, orthanc, env, rules, work) for n in (1, 2)]
        ratio = out[1]["jobs_per_s"] / out[0]["jobs_per_s"] if out[0]["jobs_per_s"] else None
        print(json.dumps({"studies": args.studies, "sleep_s": args.seconds, "workers_per_node": args.workers,
                          "cpus": os.cpu_count(), "runs": out,
                          "two_vs_one": round(ratio, 2) if ratio else None}, indent=1))
    finally:
        orthanc.stop()
        pg.stop("immediate")
        shutil.rmtree(datadir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
