"""The scheduler starts even when the index is locked at the moment it starts.

Starting APScheduler writes to the index (its job store's table).  With SQLite
locked by another connection at that moment the start failed, the scheduler's
thread ended, and the node went on receiving without ever routing, running a job
or delivering again (found by ``tests/reliability/test_database_outage.py``).  It
now retries until the index is back.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from dicomnode.config import Settings
from dicomnode.jobs.modules import load_routing
from dicomnode.jobs.scheduler import STANDBY_RETRY_SECONDS, NodeScheduler
from dicomnode.jobs.worker import ModuleCatalog, Notifier
from dicomnode.storage.db import open_database


def test_scheduler_started_while_sqlite_is_locked_starts_once_the_lock_is_gone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode.jobs.scheduler")
    settings = Settings(node={"data_dir": str(tmp_path)}, jobs={"workers": 0})
    db = open_database(settings.database_url, fsync=False, busy_timeout=1.0)
    holder = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    scheduler = NodeScheduler(settings, db, load_routing(settings), Notifier(), ModuleCatalog())
    try:
        scheduler.start()
        time.sleep(2.5)  # the start needs a write and fails at least once
        assert not scheduler.running.is_set()
        holder.execute("ROLLBACK")
        assert scheduler.running.wait(STANDBY_RETRY_SECONDS + 10), "the scheduler never started"
        assert any("cannot start the scheduler" in r.getMessage() for r in caplog.records)
    finally:
        holder.close()
        scheduler.stop()
        db.dispose()
