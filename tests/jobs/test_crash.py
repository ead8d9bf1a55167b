"""kill -9 of the node during a job: after a restart the job runs to completion exactly once.

The same node then shows that cancelling stops a running job, and that a run
overtaken by new data (a newer generation) keeps no results.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import pid_alive, storescu
from dicom_factory import make_dataset, uid, write
from sqlalchemy import select

from dicomnode.jobs.queue import cancel
from dicomnode.storage.models import Event, Job, Result


def _marks(node: Any) -> list[tuple[str, int, str]]:
    if not node.marks.exists():
        return []
    return [(p[0], int(p[1]), p[2]) for p in
            (line.split() for line in node.marks.read_text().splitlines())]


def _push(node: Any, directory: Path, description: str, study: str | None = None,
          series: str | None = None) -> str:
    study = study or uid()
    path = write(make_dataset(study_uid=study, series_uid=series, SeriesDescription=description,
                              rows=32, columns=32, StudyDescription="crash test"),
                 directory / f"{uid()}.dcm")
    assert storescu(node.port, path).returncode == 0
    return study


@pytest.mark.slow
def test_a_job_interrupted_by_kill_9_runs_to_completion_exactly_once_after_restart(
    jobs_node: Any, index: Any, wait_for: Any, tmp_path: Path,
) -> None:
    node = jobs_node(env={"DICOMNODE_TESTMODULE_SLEEP": "6"})
    db = index(node)
    study = _push(node, tmp_path, "slow crash")
    started = wait_for(lambda: [m for m in _marks(node) if m[0] == "start"], 120,
                       "the slow job to start in its worker process")
    worker_pid = started[0][1]
    node.kill()  # SIGKILL: no clean-up in the node at all

    # The orphaned worker goes with its node (PR_SET_PDEATHSIG), so it cannot finish the job.
    wait_for(lambda: not pid_alive(worker_pid), 10, f"worker process {worker_pid} to die with the node")
    with db.session() as s:
        (job,) = s.scalars(select(Job).where(Job.study_instance_uid == study)).all()
    assert (job.state, job.attempts) == ("running", 1)

    node.start()
    done = wait_for(lambda: (j := _one_job(db, study)).state == "done" and j, 120,
                    "the interrupted job to finish after the restart")
    assert done.attempts == 2 and done.error == ""
    marks = _marks(node)
    assert [m[0] for m in marks] == ["start", "start", "end"], marks
    assert marks[2][1] == marks[1][1] != worker_pid  # finished once, by the new worker
    with db.session() as s:
        results = list(s.scalars(select(Result).where(Result.study_instance_uid == study)))
        events = list(s.scalars(select(Event).where(Event.kind == "job-interrupted",
                                                    Event.study_instance_uid == study)))
    assert sorted(r.kind for r in results) == ["SC", "SR"]  # one result set
    assert all(r.job_fk == done.id for r in results)
    assert len(events) == 1 and events[0].detail["then"] == "queued"
    assert "interrupted" in events[0].detail["reason"]

    # Cancelling a running job stops its worker: no end, no results, state cancelled.
    other = _push(node, tmp_path / "b", "slow cancel")
    wait_for(lambda: len([m for m in _marks(node) if m[0] == "start"]) == 3, 60,
             "the second slow job to start")
    job_id = _one_job(db, other).id
    cancel(db, job_id)  # what `dicomnode jobs cancel` does, without its start-up time
    time.sleep(8)  # longer than the module's 6 s: it would have finished by now
    assert [m[0] for m in _marks(node)].count("end") == 1
    with db.session() as s:
        assert not list(s.scalars(select(Result).where(Result.study_instance_uid == other)))
    assert _one_job(db, other).state == "cancelled"
    shown = json.loads(node.cli("jobs", "show", str(done.id), "--json").stdout)
    assert shown["state"] == "done" and {r["kind"] for r in shown["results"]} == {"SR", "SC"}
    again = node.cli("jobs", "cancel", str(job_id), check=False)
    assert again.returncode == 1 and "already cancelled" in again.stderr


    # A run overtaken by new data keeps no results: generations never mix.
    before = len(_marks(node))
    series = uid()
    mixed = _push(node, tmp_path / "c", "slow mixed", series=series)
    wait_for(lambda: len(_marks(node)) > before, 60, "generation 1 to start")
    _push(node, tmp_path / "d", "slow mixed", study=mixed, series=series)  # a late instance
    old, new = wait_for(lambda: (j := _jobs(db, mixed)) and len(j) == 2
                        and all(x.state == "done" for x in j) and j, 120, "both generations")
    assert (old.generation, new.generation) == (1, 2)
    assert old.reason == "superseded by generation 2 before it finished; results discarded"
    with db.session() as s:
        results = list(s.scalars(select(Result).where(Result.study_instance_uid == mixed)))
    assert results and {r.job_fk for r in results} == {new.id}  # only generation 2's
    assert [m[0] for m in _marks(node)[before:]] == ["start", "end", "start", "end"]  # both ran

def _one_job(db: Any, study: str) -> Job:
    with db.session() as s:
        (job,) = s.scalars(select(Job).where(Job.study_instance_uid == study)).all()
    return job


def _jobs(db: Any, study: str) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.study_instance_uid == study).order_by(Job.id)))
