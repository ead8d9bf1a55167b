"""Completion and re-routing end to end: storescu → node → jobs → results, real processes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import storescu
from dicom_factory import make_dataset, uid, write
from sqlalchemy import select

from dicomnode.storage.models import Event, Job, Result, Study


def _mr(directory: Path, study_uid: str, series_uid: str, n: int, description: str,
        start: int = 1, seed: int = 0, study_description: str = "completion test") -> list[Path]:
    return [write(make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=i,
                               seed=seed + i, SeriesDescription=description,
                               StudyDescription=study_description),
                  directory / f"{series_uid[-6:]}-{i:03d}.dcm") for i in range(start, start + n)]


def _routed_events(db: Any, study_uid: str) -> list[Event]:
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == "study-routed",
                                                  Event.study_instance_uid == study_uid)
                              .order_by(Event.id)))


def _jobs(db: Any, study_uid: str) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).where(Job.study_instance_uid == study_uid)
                              .order_by(Job.id)))


@pytest.mark.slow
def test_a_study_sent_in_two_associations_is_routed_once_and_a_late_instance_routes_it_again(
    jobs_node: Any, index: Any, wait_for: Any, tmp_path: Path,
) -> None:
    node = jobs_node()
    db = index(node)
    study = uid()
    first, second = uid(), uid()
    part1 = _mr(tmp_path / "a", study, first, 3, "echo first")
    part2 = _mr(tmp_path / "b", study, second, 2, "echo second")

    assert storescu(node.port, *part1).returncode == 0
    time.sleep(0.8)  # shorter than series_quiet (1 s) and study_quiet (2 s)
    pushed_at = time.monotonic()
    assert storescu(node.port, *part2).returncode == 0

    routed = wait_for(lambda: _routed_events(db, study), 30, "the study to be routed")
    # Not before the study quiet period after the last new series, and exactly once.
    assert time.monotonic() - pushed_at >= 2.0
    jobs = wait_for(lambda: (j := _jobs(db, study)) and all(x.state == "done" for x in j) and j,
                    90, "both echo jobs to finish")
    time.sleep(1.5)  # a few more sweeps: nothing routes it a second time
    assert len(_routed_events(db, study)) == 1, "the study was routed more than once"
    assert routed[0].detail["generation"] == 1
    assert sorted(j.series_uids[0] for j in jobs) == sorted([first, second])
    assert {j.module for j in jobs} == {"echo"} and all(j.generation == 1 for j in jobs)
    with db.session() as s:
        assert s.scalars(select(Study.state).where(Study.study_instance_uid == study)).one() == "routed"
        first_results = list(s.scalars(select(Result).where(Result.study_instance_uid == study)))
    assert {r.kind for r in first_results} == {"SR", "SC"}
    assert len(first_results) == 4 and not any(r.superseded_by for r in first_results)

    # A late instance of the first series re-opens it: routed again as generation 2.
    late = _mr(tmp_path / "c", study, first, 1, "echo first", start=4, seed=40)
    assert storescu(node.port, *late).returncode == 0
    wait_for(lambda: len(_routed_events(db, study)) == 2, 30, "the second routing")
    jobs = wait_for(lambda: (j := _jobs(db, study)) and len(j) == 4
                    and all(x.state == "done" for x in j) and j, 90, "generation 2 jobs to finish")
    assert sorted(j.generation for j in jobs) == [1, 1, 2, 2]
    assert _routed_events(db, study)[1].detail["generation"] == 2
    with db.session() as s:
        results = list(s.scalars(select(Result).where(Result.study_instance_uid == study)))
    old = [r for r in results if r.id in {x.id for x in first_results}]
    new = [r for r in results if r not in old]
    assert len(new) == 4
    new_srs = {r.sop_instance_uid for r in new if r.kind == "SR"}
    # Every earlier result names the generation-2 report that replaced it; none is left current.
    assert all(r.superseded_by in new_srs for r in old), [(r.kind, r.superseded_by) for r in old]
    assert not any(r.superseded_by for r in new)
    gen2 = [j for j in jobs if j.generation == 2]
    assert all(j.summary["superseded"] for j in gen2)

    listed = json.loads(node.cli("jobs", "list", "--json", "--study", study).stdout)
    assert {(j["module"], j["state"], j["attempts"], j["error"]) for j in listed} == {("echo", "done", 1, "")}
    assert {"id", "study", "module", "state", "attempts", "error"} <= set(listed[0])

    # A warm worker claims a routed job at once: routing → claim well under a second.
    for job in jobs:
        with db.session() as s:
            job = s.get(Job, job.id)
        assert job.timings["queued_s"] < 5.0, job.timings  # incl. waiting for the job before it

    # A module that depends on another waits for it and gets its findings.
    chain = uid()
    files = _mr(tmp_path / "d", chain, uid(), 2, "echo chained", study_description="chain test")
    assert storescu(node.port, *files).returncode == 0
    chained = wait_for(lambda: (j := _jobs(db, chain)) and len(j) == 2
                       and all(x.state == "done" for x in j) and j, 90, "echo then after")
    echo_job, after_job = sorted(chained, key=lambda j: j.module != "echo")
    assert (echo_job.module, after_job.module) == ("echo", "after")
    assert after_job.summary["depends_on"] == ["echo"]
    assert after_job.started_at >= echo_job.finished_at  # it waited
    assert after_job.summary["findings"][0]["extra"] == {"prior_echo": 1}

    # A module that selects no case: the job is done (not failed) and says why.
    picky = uid()
    assert storescu(node.port, *_mr(tmp_path / "e", picky, uid(), 1, "picky one")).returncode == 0
    (job,) = wait_for(lambda: (j := _jobs(db, picky)) and j[0].state in ("done", "failed") and j,
                      60, "the picky job")
    assert (job.state, job.error, job.reason) == (
        "done", "", "none of the 1 series is to this module's taste")
    with db.session() as s:
        assert not s.scalars(select(Result).where(Result.job_fk == job.id)).all()
