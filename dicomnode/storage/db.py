"""The database engine: SQLite in WAL mode by default, PostgreSQL by URL.

:func:`open_database` creates the engine, brings the schema to the newest Alembic
revision and returns a :class:`Database` with a session factory.  Every part of
the node (receiver, jobs, CLI) goes through it so that the pragmas and the
migrations are applied the same way everywhere.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: Seconds a SQLite writer waits for the database (``PRAGMA busy_timeout``) and for
#: its turn among this process's writers.
BUSY_TIMEOUT = 30.0
#: After a writer found SQLite locked for a whole busy timeout, the writers of the
#: next seconds fail at once instead of each waiting a full timeout in turn.
LOCKED_FAIL_FAST_SECONDS = 2.0


def _locked(where: str) -> OperationalError:
    return OperationalError(where, None, sqlite3.OperationalError("database is locked"))


@dataclass
class Database:
    """An engine, its session factory, and a write lock for SQLite.

    SQLite allows one writer at a time; serialising writers in-process with
    ``write_lock`` avoids ``database is locked`` retries under parallel
    associations.  PostgreSQL needs no such lock (``write_lock`` is a no-op there).

    When another process holds SQLite's write lock (a backup, an operator's open
    transaction), every writer answers within about one ``busy_timeout``: a
    writer waits at most that long for its turn here, and once one writer has
    waited a whole timeout in vain the writers of the next
    :data:`LOCKED_FAIL_FAST_SECONDS` fail at once.  Without that, N associations
    would queue behind the lock and the last would answer after N timeouts
    (senders give up long before; a receiver must answer 0xA700 instead).
    """

    engine: Engine
    sessionmaker: sessionmaker[Session]
    is_sqlite: bool
    busy_timeout: float = BUSY_TIMEOUT
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _locked_until: float = 0.0

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A writing session, serialised in-process on SQLite.

        Raises
        ------
        sqlalchemy.exc.OperationalError
            On SQLite, "database is locked" when the database or this process's
            writer queue stayed busy for ``busy_timeout`` (or just did).
        """
        if not self.is_sqlite:
            with self.session() as session:
                yield session
            return
        if time.monotonic() < self._locked_until:
            raise _locked("SQLite locked by another process a moment ago")
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise _locked(f"no turn among this process's writers in {self.busy_timeout:g} s")
        try:
            if time.monotonic() < self._locked_until:  # tripped while we waited our turn
                raise _locked("SQLite locked by another process a moment ago")
            try:
                with self.session() as session:
                    yield session
            except OperationalError as exc:
                if "locked" in str(exc.orig) or "busy" in str(exc.orig):
                    self._locked_until = time.monotonic() + LOCKED_FAIL_FAST_SECONDS
                    logger.error("index database locked for %g s: writers fail at once for %g s",
                                 self.busy_timeout, LOCKED_FAIL_FAST_SECONDS)
                raise
        finally:
            self._lock.release()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(synchronous: str, busy_timeout: float) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers (CLI, routing sweep) run beside the receiver's writes.
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed instance row survives power loss, not only a crash.
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    return on_connect


def create_db_engine(url: str, *, fsync: bool = True, busy_timeout: float = BUSY_TIMEOUT) -> Engine:
    """Create an engine for ``url`` with the node's pragmas and pool settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}, pool_size=20,
            max_overflow=20,
        )
        event.listen(engine, "connect", _sqlite_pragmas("FULL" if fsync else "NORMAL", busy_timeout))
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


#: pg_advisory_lock key serialising schema upgrades of nodes that start together.
MIGRATION_LOCK_KEY = 0x44434D4E  # "DCMN"


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest Alembic revision (idempotent).

    On PostgreSQL several nodes may start at once against one index: the upgrade
    runs under an advisory lock, so the second node waits and then finds the
    schema current instead of racing the first one's DDL.
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine.dialect.name != "postgresql":
        cfg.attributes["connection_engine"] = engine
        command.upgrade(cfg, "head")
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            cfg.attributes["connection_engine"] = engine
            command.upgrade(cfg, "head")
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()


def open_database(url: str, *, fsync: bool = True, upgrade: bool = True,
                  busy_timeout: float = BUSY_TIMEOUT) -> Database:
    """Open (and migrate) the index database at ``url``.

    ``busy_timeout``: seconds a SQLite writer waits for a lock held elsewhere.
    """
    engine = create_db_engine(url, fsync=fsync, busy_timeout=busy_timeout)
    if upgrade:
        migrate(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    return Database(engine=engine, sessionmaker=factory, is_sqlite=engine.dialect.name == "sqlite",
                    busy_timeout=busy_timeout)
