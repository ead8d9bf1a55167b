"""The scheduler's job store outlives an unreachable index (a real refused connection)."""
from __future__ import annotations

import datetime as dt

import pytest
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from conftest import free_port
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from dicomnode.jobs.scheduler import resilient_job_store


def _unreachable_store(cls: type) -> SQLAlchemyJobStore:
    # Nothing listens on this port: every statement fails with a refused connection,
    # as while PostgreSQL restarts.
    engine = create_engine(f"postgresql+psycopg://x@127.0.0.1:{free_port()}/x",
                           connect_args={"connect_timeout": 2})
    return cls(engine=engine)  # not started: start() would create its table


def test_apscheduler_s_own_store_raises_where_its_main_loop_does_not_catch() -> None:
    # get_next_run_time runs outside the try of APScheduler's _process_jobs: this is
    # the exception that ended the scheduler thread.
    store = _unreachable_store(SQLAlchemyJobStore)
    with pytest.raises(OperationalError):
        store.get_next_run_time()


def test_the_resilient_store_logs_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    store = _unreachable_store(resilient_job_store(SQLAlchemyJobStore))
    assert store.get_next_run_time() is None
    job = Job(BackgroundScheduler(timezone="UTC"), id="retention", func=print,
              trigger=IntervalTrigger(seconds=60), executor="default", args=(), kwargs={},
              name="retention", misfire_grace_time=None, coalesce=True, max_instances=1,
              next_run_time=dt.datetime.now(dt.UTC))
    store.update_job(job)  # APScheduler's own raises OperationalError here
    assert "job store unreachable" in caplog.text
    assert "could not save job retention's next run" in caplog.text
