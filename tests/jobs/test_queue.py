"""The job queue on SQLite and PostgreSQL: creation, claims, leases, backoff, dependencies."""
from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import select

from dicomnode.jobs import queue
from dicomnode.jobs.lock import SchedulerLock
from dicomnode.jobs.queue import ModuleInfo
from dicomnode.routing.router import Route
from dicomnode.storage.models import Event, Job, Patient, Study, utcnow

MODULES = {"quality": ModuleInfo("quality", "series"),
           "mtici": ModuleInfo("mtici", "study", ("quality",)),
           "spine": ModuleInfo("spine", "study")}


def _study(db: Any, uid: str = "1.2.3", state: str = "complete") -> Study:
    with db.write() as s:
        patient = Patient(patient_id="P")
        s.add(patient)
        s.flush()
        study = Study(study_instance_uid=uid, patient_fk=patient.id, state=state)
        s.add(study)
        s.flush()
        return study


def _route(db: Any, study: Study, generation: int, routes: list[Route]) -> list[Job]:
    with db.write() as s:
        ids = queue.enqueue_routes(s, s.get(Study, study.id), generation, routes, MODULES, 3)
    with db.session() as s:
        return [s.get(Job, i) for i in ids]


QUALITY = Route("dsa", "series", ("quality",), ("1.1", "1.2"), ("pacs",))
MTICI = Route("pair", "study", ("mtici",), ("1.1", "1.2"), ("pacs", "viewer"))


def test_a_series_module_gets_a_job_per_series_and_a_study_module_one_that_waits(database: Any) -> None:
    study = _study(database)
    jobs = _route(database, study, 1, [QUALITY, MTICI,
                                       Route("again", "series", ("quality",), ("1.2",), ("pacs",))])
    by = {(j.module, tuple(j.series_uids)): j for j in jobs}
    assert set(by) == {("quality", ("1.1",)), ("quality", ("1.2",)), ("mtici", ("1.1", "1.2"))}
    assert by[("quality", ("1.2",))].rule == "dsa,again"  # two rules, one job
    assert by[("mtici", ("1.1", "1.2"))].state == "waiting"
    assert by[("mtici", ("1.1", "1.2"))].destinations == ["pacs", "viewer"]
    assert all(j.state == "queued" for k, j in by.items() if k[0] == "quality")
    # Routing the same generation again is idempotent: same keys, same rows.
    again = _route(database, study, 1, [QUALITY, MTICI])
    assert sorted(j.id for j in again) == sorted(j.id for j in jobs)


def test_the_waiting_job_is_queued_when_its_dependencies_have_finished(database: Any) -> None:
    study = _study(database)
    jobs = _route(database, study, 1, [QUALITY, MTICI])
    mtici = next(j for j in jobs if j.module == "mtici")
    first = queue.claim(database, 60)
    assert first is not None and first.module == "quality"
    with database.write() as s:
        assert queue.finish_done(s, first.job_id, first.token, summary={"findings": []})
    with database.session() as s:
        assert s.get(Job, mtici.id).state == "waiting"  # one quality job still unfinished
    second = queue.claim(database, 60)
    assert second is not None and second.module == "quality"
    assert queue.finish_failed(database, second.job_id, second.token, "boom", [1]) == "retry_wait"
    with database.session() as s:
        assert s.get(Job, mtici.id).state == "waiting"  # a retry is not finished
    queue.cancel(database, second.job_id)
    with database.session() as s:
        assert s.get(Job, mtici.id).state == "queued"


def test_a_new_generation_cancels_the_unfinished_jobs_of_the_old_one(database: Any) -> None:
    study = _study(database)
    old = _route(database, study, 1, [QUALITY])
    running = queue.claim(database, 60)
    assert running is not None
    new = _route(database, study, 2, [QUALITY])
    with database.session() as s:
        states = {j.id: (j.state, j.reason) for j in s.scalars(select(Job))}
    waiting = next(j for j in old if j.id != running.job_id)
    assert states[waiting.id] == ("cancelled", "superseded by generation 2 (new data arrived)")
    assert states[running.job_id][0] == "running"  # its runner discards its results itself
    assert {states[j.id][0] for j in new} == {"queued"}
    assert {j.idempotency_key for j in new}.isdisjoint({j.idempotency_key for j in old})


def test_failed_attempts_back_off_on_the_schedule_capped_at_its_last_value(database: Any) -> None:
    study = _study(database)
    (job,) = _route(database, study, 1, [Route("r", "series", ("quality",), ("1.1",), ())])
    waits = []
    for attempt in (1, 2, 3):
        claim = queue.claim(database, 60)
        assert claim is not None and claim.attempt == attempt
        before = utcnow()
        state = queue.finish_failed(database, claim.job_id, claim.token, f"fail {attempt}", [5, 7])
        with database.session() as s:
            row = s.get(Job, job.id)
        if attempt < 3:
            assert state == "retry_wait" and queue.claim(database, 60) is None  # not yet due
            waits.append(round((row.next_attempt_at - before).total_seconds()))
            assert queue.wake_retries(database, utcnow() + dt.timedelta(seconds=60)) == 1
        else:
            assert state == "failed" and row.error == "fail 3" and row.next_attempt_at is None
    assert waits == [5, 7]
    assert queue.backoff([5, 7], 9) == 7.0


def test_concurrent_workers_never_claim_the_same_job(database: Any) -> None:
    study = _study(database)
    series = tuple(f"1.{i}" for i in range(30))
    _route(database, study, 1, [Route("r", "series", ("quality",), series, ())])
    claimed: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        from dicomnode.storage.db import open_database

        own = open_database(str(database.engine.url.render_as_string(hide_password=False)),
                            fsync=False, upgrade=False)
        try:
            while (claim := queue.claim(own, 60)) is not None:
                with lock:
                    claimed.append(claim.job_id)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 30


def test_a_job_whose_worker_died_is_queued_again_and_fails_after_its_last_attempt(database: Any) -> None:
    study = _study(database)
    (job,) = _route(database, study, 1, [Route("r", "series", ("quality",), ("1.1",), ())])
    claim = queue.claim(database, 60, token="vm:999999999:dead")
    assert claim is not None
    assert queue.recover_interrupted(database) == []  # lease still valid, owner on another host
    later = utcnow() + dt.timedelta(seconds=120)
    assert queue.recover_interrupted(database, later) == [job.id]
    with database.session() as s:
        row = s.get(Job, job.id)
        assert (row.state, row.attempts) == ("queued", 1) and "interrupted" in row.error
        assert s.scalars(select(Event.kind).where(Event.kind == "job-interrupted")).all()
    # A lost worker can no longer finish it.
    with database.write() as s:
        assert not queue.finish_done(s, job.id, claim.token)
    for _ in range(2):
        assert queue.claim(database, -1) is not None  # leases that expire at once
        queue.recover_interrupted(database)
    with database.session() as s:
        row = s.get(Job, job.id)
    assert (row.state, row.attempts) == ("failed", 3)


def test_only_one_scheduler_per_database(database: Any) -> None:
    first, second = SchedulerLock(database), SchedulerLock(database)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_operator_retry_and_cancel_follow_the_states(database: Any) -> None:
    study = _study(database)
    (job,) = _route(database, study, 1, [Route("r", "series", ("quality",), ("1.1",), ())])
    with pytest.raises(queue.JobStateError, match="is queued"):
        queue.retry(database, job.id)
    queue.cancel(database, job.id)
    with pytest.raises(queue.JobStateError, match="already cancelled"):
        queue.cancel(database, job.id)
    assert queue.retry(database, job.id).state == "queued"
    claim = queue.claim(database, 60)
    assert claim is not None
    with database.write() as s:
        queue.finish_done(s, claim.job_id, claim.token)
    with pytest.raises(queue.JobStateError, match="--force"):
        queue.retry(database, job.id)
    assert queue.retry(database, job.id, force=True).attempts == 0
    with pytest.raises(LookupError):
        queue.cancel(database, 12345)
