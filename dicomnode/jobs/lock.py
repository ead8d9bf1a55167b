"""One scheduler per database: an exclusive lock that dies with its holder.

SQLite: ``flock`` on a file beside the database (an SQLite index is a local file, so
every process that shares it shares this lock file too).  PostgreSQL: a session
advisory lock on a connection held open for as long as the scheduler runs.  Both
are released by the kernel or the server when the holder dies, even by kill -9, so
a standby node takes over without any stale-lock clean-up.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import text

from dicomnode.storage.db import Database

logger = logging.getLogger(__name__)

#: pg_advisory_lock key: the first 8 bytes of sha256("dicomnode-scheduler"), signed.
ADVISORY_KEY = 0x3F1B2C9D5E6A7B80 - (1 << 63)


class SchedulerLock:
    """Try-once exclusive lock; :meth:`acquire` returns whether this process holds it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._fd: int | None = None
        self._conn: Any = None

    def _lock_path(self) -> Path:
        database = self.db.engine.url.database or ""
        if not database or database == ":memory:":
            raise RuntimeError("the scheduler needs a file or server database")
        return Path(database).with_name(Path(database).name + ".scheduler-lock")

    def acquire(self) -> bool:
        """Take the lock if it is free (never waits); True if this process holds it."""
        if self.held:
            return True
        if self.db.is_sqlite:
            fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True
        conn = self.db.engine.connect()
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar())
        conn.commit()
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None or self._conn is not None

    def release(self) -> None:
        """Give the lock up (a standby node takes it within seconds)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
