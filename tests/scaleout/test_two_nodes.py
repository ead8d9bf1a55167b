"""Two ``dicomnode run`` processes on one PostgreSQL index and one spool directory.

Studies are pushed across both receivers; both nodes' workers claim jobs with
``FOR UPDATE SKIP LOCKED``.  Every job runs exactly once and its results reach a real
Orthanc once; one scheduler holds the advisory lock; the metrics endpoints and
``dicomnode status`` report the counts the test produced.  Then the node running a
job is killed with SIGKILL: the other node takes the job after its lease expires
(the nodes have host names of their own, so no pid shortcut applies) and runs it to
completion once.

``SCALEOUT_STUDIES`` (default 60) sets how many studies; the issue's 200 take about
three times as long on the 2-core CI machine (see ``measure_throughput.py``).
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from scaleout.cluster import (
    HostNode,
    advisory_holders,
    ancestor_in,
    create_database,
    marks,
    node_config,
    pid_of_local_port,
    push,
    scrape,
    throughput,
    wait_for,
    write_studies,
)
from sqlalchemy import select

from dicomnode.storage.db import open_database
from dicomnode.storage.models import Delivery, Event, Instance, Job, Result

STUDIES = int(os.environ.get("SCALEOUT_STUDIES", "60"))
LEASE_SECONDS = 4.0


def _metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_two_nodes_on_postgresql_run_every_job_once_and_survive_a_kill_9(
    postgres: Any, sleepy_env: tuple[dict[str, str], Path], orthanc_factory: Any, tmp_path: Path,
) -> None:
    env, rules = sleepy_env
    marks_file = Path(env["DICOMNODE_TESTMODULE_MARKS"])
    marks_file.unlink(missing_ok=True)
    url = create_database(postgres.url, f"scaleout_{os.getpid()}_{time.monotonic_ns()}")
    orthanc = orthanc_factory()
    spool = tmp_path / "shared-spool"
    nodes: list[HostNode] = []
    for name in ("a", "b"):
        node = HostNode(data_dir=tmp_path / f"node-{name}", port=free_port(), hostname=f"scaleout-{name}",
                        env=env, config=node_config(url, spool, rules, orthanc.dicom_port, free_port(),
                                                    LEASE_SECONDS))
        node.data_dir.mkdir()
        nodes.append(node)
    db = open_database(url, fsync=False)
    try:
        for node in nodes:
            node.start()
        _run(nodes, db, url, orthanc, marks_file, tmp_path)
    finally:
        for node in nodes:
            node.stop()
        db.dispose()


def _run(nodes: list[HostNode], db: Any, url: str, orthanc: Any, marks_file: Path, tmp_path: Path) -> None:
    a, b = nodes
    pids = {a.proc.pid: a, b.proc.pid: b}

    # One scheduler: one advisory lock holder, and it is one of our two nodes.
    holder_port = wait_for(lambda: advisory_holders(url), 60, "a node to take the scheduler lock")
    assert len(holder_port) == 1
    holder = pids[ancestor_in(pid_of_local_port(holder_port[0]), pids)]
    standby = b if holder is a else a
    wait_for(lambda: "standing by" in standby.log(), 30, "the other node to stand by")
    assert "scheduler started" in holder.log() and "scheduler started" not in standby.log()

    # Push the studies across both receivers at once (one association each).
    studies = write_studies(tmp_path / "studies", STUDIES, 0.2)
    half = len(studies) // 2


    pushes = [threading.Thread(target=push, args=(node.port, [p for _, p in part]))
              for node, part in ((a, studies[:half]), (b, studies[half:]))]
    for t in pushes:
        t.start()
    for t in pushes:
        t.join()
    uids = {s for s, _ in studies}

    def all_delivered() -> bool:
        with db.session() as s:
            done = s.scalars(select(Job.state).where(Job.study_instance_uid.in_(uids))).all()
            pending = s.scalar(select(Delivery.id).where(Delivery.state != "delivered").limit(1))
        return len(done) == STUDIES and set(done) == {"done"} and pending is None
    wait_for(all_delivered, 240, f"{STUDIES} jobs done and their results delivered")

    with db.session() as s:
        jobs = list(s.scalars(select(Job).where(Job.study_instance_uid.in_(uids))))
        results = list(s.scalars(select(Result).where(Result.study_instance_uid.in_(uids))))
        deliveries = list(s.scalars(select(Delivery)))
        stored_bytes = sum(s.scalars(select(Instance.size).where(Instance.series.has(is_result=False))))
    # Every job ran exactly once: one job per study, one attempt, one start and one end mark.
    assert sorted(j.study_instance_uid for j in jobs) == sorted(uids)
    assert {j.attempts for j in jobs} == {1}
    seen = marks(marks_file)
    starts = collections.Counter(m[3] for m in seen if m[0] == "start")
    ends = collections.Counter(m[3] for m in seen if m[0] == "end")
    assert starts == ends == collections.Counter(uids)
    # Both nodes' workers took jobs (SKIP LOCKED shares the queue).
    # (The mark's parent pid is the node's worker-role child; mapped while it is alive.)
    by_node = collections.Counter(ancestor_in(m[2], pids) for m in seen if m[0] == "end")
    assert set(by_node) == set(pids), by_node
    # One result set per job, each delivered once to Orthanc, which holds them all.
    assert collections.Counter((r.job_fk, r.kind) for r in results) == collections.Counter(
        {(j.id, k): 1 for j in jobs for k in ("SR", "SC")})
    assert len(deliveries) == len(results) and {(d.state, d.attempts) for d in deliveries} == {("delivered", 1)}
    assert {r.sop_instance_uid for r in results} <= orthanc.sop_instance_uids()
    rate = throughput(db, uids)
    print(f"two nodes, {STUDIES} studies: {json.dumps(rate)}; jobs per node {dict(by_node)}")

    # The metrics endpoints report what this test produced (per process: summed over nodes;
    # index-wide: the same on each node).
    # A slot records a job's duration just after the worker process reports it done
    # (the index says done a moment earlier), so wait for the last one to be counted.
    def scrape_all() -> list[dict[Any, float]]:
        return [scrape(n.config["metrics"]["port"]) for n in nodes]
    try:
        scraped = wait_for(lambda: (m := scrape_all()) and sum(
            _metric(x, "dicomnode_job_seconds_count", module="sleepy", outcome="done") for x in m)
            >= STUDIES and m, 30, "every finished job in the job-duration histograms")
    except AssertionError:
        print({n.hostname: {k: v for k, v in m.items() if "job_seconds_count" in k[0]}
               for n, m in zip(nodes, scrape_all(), strict=True)}, by_node, pids)
        raise
    assert sum(_metric(m, "dicomnode_instances_received_total", outcome="stored") for m in scraped) == STUDIES
    assert sum(_metric(m, "dicomnode_received_bytes_total") for m in scraped) == stored_bytes
    assert sum(_metric(m, "dicomnode_store_seconds_count") for m in scraped) == STUDIES
    assert sum(_metric(m, "dicomnode_job_seconds_count", module="sleepy", outcome="done")
               for m in scraped) == STUDIES
    # Only the scheduler holder routes, so only it observes completion waits.
    waits = {n.hostname: _metric(m, "dicomnode_completion_wait_seconds_count") for n, m in zip(nodes, scraped, strict=True)}
    assert waits == {holder.hostname: STUDIES, standby.hostname: 0}
    for m in scraped:
        assert _metric(m, "dicomnode_index_jobs", state="done") == STUDIES
        assert _metric(m, "dicomnode_index_jobs", state="queued") == 0
        assert _metric(m, "dicomnode_index_delivery_attempts_total", outcome="ok") == 2 * STUDIES
        assert _metric(m, "dicomnode_index_delivery_attempts_total", outcome="failed") == 0
    stages = json.loads(a.cli("status", "--json").stdout)["stages"]
    assert stages["received"]["instances"] == STUDIES + 2 * STUDIES  # received + SR + SC
    assert stages["jobs"]["duration_by_module"]["sleepy"]["count"] == STUDIES
    assert stages["completion"]["count"] == STUDIES
    assert stages["delivery"] == {"by_state": {"delivered": 2 * STUDIES}, "attempts": 2 * STUDIES,
                                  "failed_attempts": 0}

    # kill -9 the node running a job: the other takes it once the lease has expired.
    ((study, path),) = write_studies(tmp_path / "long", 1, 8)
    push(a.port, [path])
    start = wait_for(lambda: [m for m in marks(marks_file) if m[0] == "start" and m[3] == study],
                     120, "the long job to start")[0]
    victim = pids[ancestor_in(start[2], pids)]
    survivor = b if victim is a else a
    victim.kill()
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.study_instance_uid == study)).one()
    assert (job.state, job.attempts) == ("running", 1)
    expires = job.lease_expires_at
    done = wait_for(lambda: (j := _job(db, study)).state == "done" and j, 120,
                    "the survivor to finish the killed node's job")
    assert done.attempts == 2
    with db.session() as s:
        (event,) = s.scalars(select(Event).where(Event.kind == "job-interrupted",
                                                 Event.study_instance_uid == study)).all()
        results = list(s.scalars(select(Result).where(Result.study_instance_uid == study)))
    # Recovered by lease expiry (the survivor cannot see the victim's pid: another "host").
    assert event.at >= expires and "scaleout-" in event.detail["reason"]
    long_marks = [m for m in marks(marks_file) if m[3] == study]
    assert [m[0] for m in long_marks] == ["start", "start", "end"]
    assert ancestor_in(long_marks[2][2], pids) == survivor.proc.pid
    assert sorted(r.kind for r in results) == ["SC", "SR"] and {r.job_fk for r in results} == {done.id}
    wait_for(lambda: {r.sop_instance_uid for r in results} <= orthanc.sop_instance_uids(), 60,
             "the long job's results in Orthanc")
    with db.session() as s:
        rows = list(s.scalars(select(Delivery).where(Delivery.result_fk.in_([r.id for r in results]))))
    assert [(d.state, d.attempts) for d in rows] == [("delivered", 1)] * 2
    # The survivor holds the scheduler lock now (it took it over if the victim held it).
    wait_for(lambda: [ancestor_in(pid_of_local_port(p), pids)
                      for p in advisory_holders(url)] == [survivor.proc.pid], 30,
             "the survivor to hold the scheduler lock")


def _job(db: Any, study: str) -> Job:
    with db.session() as s:
        return s.scalars(select(Job).where(Job.study_instance_uid == study)).one()
