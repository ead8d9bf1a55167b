"""The database engine: SQLite in WAL mode by default, PostgreSQL by URL.

:func:`open_database` creates the engine, brings the schema to the newest Alembic
revision and returns a :class:`Database` with a session factory.  Every part of
the node (receiver, jobs, CLI) goes through it so that the pragmas and the
migrations are applied the same way everywhere.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass
class Database:
    """An engine, its session factory, and a write lock for SQLite.

    SQLite allows one writer at a time; serialising writers in-process with
    ``write_lock`` avoids ``database is locked`` retries under parallel
    associations.  PostgreSQL needs no such lock (``write_lock`` is a no-op there).
    """

    engine: Engine
    sessionmaker: sessionmaker[Session]
    is_sqlite: bool
    _lock: threading.RLock = field(default_factory=threading.RLock)

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
        """A writing session, serialised in-process on SQLite."""
        if self.is_sqlite:
            with self._lock, self.session() as session:
                yield session
        else:
            with self.session() as session:
                yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers (CLI, routing sweep) run beside the receiver's writes.
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed instance row survives power loss, not only a crash.
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return on_connect


def create_db_engine(url: str, *, fsync: bool = True) -> Engine:
    """Create an engine for ``url`` with the node's pragmas and pool settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
            max_overflow=20,
        )
        event.listen(engine, "connect", _sqlite_pragmas("FULL" if fsync else "NORMAL"))
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


def open_database(url: str, *, fsync: bool = True, upgrade: bool = True) -> Database:
    """Open (and migrate) the index database at ``url``."""
    engine = create_db_engine(url, fsync=fsync)
    if upgrade:
        migrate(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    return Database(engine=engine, sessionmaker=factory, is_sqlite=engine.dialect.name == "sqlite")
