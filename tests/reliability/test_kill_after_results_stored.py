"""kill -9 in the one window where a job could run twice to a second result.

A job's results are committed (spool files, Result and Delivery rows) in one
transaction, and the job is marked done in the next.  ``tests/jobs/test_crash.py``
kills the node while the module predicts; this test kills it *between* those two
commits, for real: on PostgreSQL, the test holds the job's row with
``SELECT … FOR NO KEY UPDATE`` while the ``slow`` module runs.  Inserting the
results (whose foreign key takes only a KEY SHARE lock) goes through; marking the
job done (an UPDATE of that row) waits.  Once the results are in the index the
node is killed, the lock released, the node restarted.

Asserted: the interrupted job runs again (attempt 2) and finishes once; its
results are the same objects (results.md: UIDs derived from the inputs), so the
study has one result set, not two; each result reaches the PACS with its one SOP
Instance UID (at most re-sent, never a second object).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, pid_alive, storescu
from dicom_factory import make_dataset, uid, write
from results.test_outbox import storage_scp
from sqlalchemy import create_engine, select, text

from dicomnode.storage.db import open_database
from dicomnode.storage.models import Delivery, Job, Result


@pytest.mark.slow
def test_kill_9_after_results_are_stored_but_before_done_gives_one_result_set(
        delivering_node: Any, pg_database_url: str, wait_for: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks.txt"
    pacs_port = free_port()
    received: list[str] = []
    with storage_scp({}, pacs_port, received):
        node = delivering_node(pacs_port, "TESTSCP", database_url=pg_database_url,
                               env={"DICOMNODE_TESTMODULE_SLEEP": "3",
                                    "DICOMNODE_TESTMODULE_MARKS": str(marks)})
        db = open_database(pg_database_url, fsync=False, upgrade=False)
        locker = create_engine(pg_database_url)
        try:
            study = uid()
            path = write(make_dataset(study_uid=study, SeriesDescription="slow window",
                                      rows=32, columns=32), tmp_path / "in.dcm")
            assert storescu(node.port, path).returncode == 0

            def running() -> Job | None:
                with db.session() as s:
                    return s.scalars(select(Job).where(Job.study_instance_uid == study,
                                                       Job.state == "running")).first()

            job = wait_for(running, 120, "the slow job to run")
            with locker.connect() as conn:
                conn.execute(text("SELECT id FROM job WHERE id = :i FOR NO KEY UPDATE"), {"i": job.id})

                def stored() -> list[Result]:
                    with db.session() as s:
                        return list(s.scalars(select(Result).where(Result.job_fk == job.id)))

                first = wait_for(stored, 60, "the job's results to be committed")
                time.sleep(0.5)  # finish_done is now waiting for the row lock
                with db.session() as s:
                    assert s.get(Job, job.id).state == "running"  # results in, job not done
                node.kill()
                # The job's process dies with the node a moment later (PR_SET_PDEATHSIG,
                # through the worker role): the lock is released only then, or that
                # process could still mark the job done in between (attempt 1, no rerun).
                worker = int(marks.read_text().split()[1])
                wait_for(lambda: not pid_alive(worker), 30, "the job's process to die with its node")
                conn.rollback()

            node.start()

            def done() -> bool:
                with db.session() as s:
                    j = s.get(Job, job.id)
                    rows = s.scalars(select(Delivery)).all()
                return j.state == "done" and bool(rows) and all(r.state == "delivered" for r in rows)

            wait_for(done, 120, "the interrupted job to finish and its results to be delivered")
            with db.session() as s:
                finished = s.get(Job, job.id)
                jobs = s.scalars(select(Job).where(Job.study_instance_uid == study)).all()
                results = s.scalars(select(Result).where(Result.study_instance_uid == study)).all()
                deliveries = s.scalars(select(Delivery)).all()
        finally:
            locker.dispose()
            db.dispose()
    assert [j.id for j in jobs] == [job.id] and finished.attempts == 2
    assert sorted(r.kind for r in results) == ["SC", "SR"]  # one result set
    assert {r.sop_instance_uid for r in results} == {r.sop_instance_uid for r in first}
    assert finished.summary["results"] and set(finished.summary["results"]) == {
        r.sop_instance_uid for r in results}
    assert len(deliveries) == 2
    counts = Counter(received)
    assert set(counts) == {r.sop_instance_uid for r in results} and max(counts.values()) <= 2
    kinds = [line.split()[0] for line in marks.read_text().splitlines()]
    assert kinds == ["start", "end", "start", "end"]  # predicted twice, stored once
