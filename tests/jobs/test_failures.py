"""A module that raises, one that exhausts memory, one killed by a signal: the job fails, not the node."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import dcmtk, storescu
from dicom_factory import make_dataset, uid, write
from sqlalchemy import select

from dicomnode.storage.models import Job

FAILING = {
    "raising": "RuntimeError in predict at dicomnode_testmodules.py",
    "hog": "MemoryError in predict at dicomnode_testmodules.py",
    "killed": "worker process killed by SIGKILL (out of memory?",
}


def _study(directory: Path, description: str) -> tuple[str, Path]:
    study = uid()
    path = write(make_dataset(study_uid=study, SeriesDescription=description, rows=32, columns=32,
                              StudyDescription="failure test"), directory / f"{description}.dcm")
    return study, path


def _marks(node: Any) -> list[tuple[str, str, float]]:
    """(what, module, unix time) of every predict start/end the test modules wrote."""
    if not node.marks.exists():
        return []
    return [(p[0], p[2], float(p[4])) for p in
            (line.split() for line in node.marks.read_text().splitlines())]


@pytest.mark.slow
def test_failing_modules_fail_their_jobs_with_the_reason_retry_as_configured_and_the_node_keeps_receiving(
    jobs_node: Any, index: Any, wait_for: Any, tmp_path: Path,
) -> None:
    node = jobs_node(max_attempts=2, retry_backoff_seconds=[1.5])
    db = index(node)
    studies = {}
    for module in FAILING:
        studies[module], path = _study(tmp_path, module)
        assert storescu(node.port, path).returncode == 0

    def finished() -> list[Job] | None:
        with db.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.module.in_(list(FAILING)))))
        return jobs if len(jobs) == 3 and all(j.state == "failed" for j in jobs) else None

    # While the modules fail (and their worker processes die), the node keeps receiving.
    received = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and (len(received) < 3 or not finished()):
        if len(received) < 3:
            study, path = _study(tmp_path / str(len(received)), "echo meanwhile")
            sent = storescu(node.port, path)
            assert sent.returncode == 0, sent.stderr
            received.append(study)
        time.sleep(1.0)
    jobs = {j.module: j for j in wait_for(finished, 30, "the three failing jobs to fail")}
    assert node.proc is not None and node.proc.poll() is None, "the node died"
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aec", node.aetitle, "127.0.0.1", str(node.port)],
        capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr

    for module, words in FAILING.items():
        job = jobs[module]
        assert job.attempts == 2 and job.max_attempts == 2, (module, job.attempts)
        assert words in job.error, (module, job.error)
        assert job.study_instance_uid == studies[module]
        starts = [t for what, m, t in _marks(node) if what == "start" and m == module]
        assert len(starts) == 2, (module, starts)  # one run per attempt, no more
        assert starts[1] - starts[0] >= 1.5, "retried before the configured backoff"
        assert not any(what == "end" and m == module for what, m, _ in _marks(node))
    assert "deliberate failure of the raising test module" in jobs["raising"].error

    # Studies received meanwhile were stored and their echo jobs ran normally.
    def echoed() -> bool:
        with db.session() as s:
            states = list(s.scalars(select(Job.state).where(Job.study_instance_uid.in_(received))))
        return len(states) == 3 and set(states) == {"done"}

    wait_for(echoed, 90, "the echo jobs of the studies received meanwhile")

    status = json.loads(node.cli("status", "--json").stdout)
    assert status["jobs_by_state"]["failed"] == 3
    assert {f["module"] for f in status["last_failures"]} == set(FAILING)
    listed = json.loads(node.cli("jobs", "list", "--json", "--state", "failed").stdout)
    assert {(j["module"], j["attempts"]) for j in listed} == {(m, 2) for m in FAILING}
    assert all(j["error"] for j in listed)

    # An operator retry runs the job again with fresh attempts.
    retried = json.loads(node.cli("jobs", "retry", str(jobs["raising"].id), "--json").stdout)
    assert retried["state"] == "queued" and retried["attempts"] == 0
    wait_for(lambda: len([1 for what, m, _ in _marks(node) if m == "raising" and what == "start"]) == 4,
             60, "the retried job's two attempts")
