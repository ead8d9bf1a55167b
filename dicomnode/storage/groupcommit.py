"""Group commit: the index writes of concurrent C-STOREs share one transaction.

Each write still returns only after its rows are committed (the C-STORE success
contract of :mod:`dicomnode.storage.ingest`); what is shared is the commit (an fsync
on SQLite with ``synchronous=FULL``), paid once per batch instead of once per instance.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from dicomnode.storage.db import Database

__all__ = ["GroupCommit"]


class GroupCommit:
    """Index writes of concurrent C-STOREs share one transaction and one commit.

    With 8 associations the receiver spent most of its time waiting for SQLite's
    single writer, each holder paying a commit (an fsync) of its own (profile in
    bench/RESULTS.md).  Here a writer that finds others queued commits them all with
    its own: the first thread to arrive leads a batch (whatever is queued when it
    starts), the rest wait for that commit; the next queued thread then leads the
    next batch.  A batch that fails is retried one write per transaction, so one bad
    instance fails alone.  Each call returns only after its rows are committed.

    Parameters
    ----------
    db : Database
        The index.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._leading = False

    def run(self, write: Callable[[Session], Any]) -> Any:
        """Run ``write(session)`` in a committed transaction (maybe shared); its result."""
        item = _Write(write)
        with self._lock:
            self._queue.append(item)
            item.lead = not self._leading
            self._leading = True
        if not item.lead:
            item.done.wait()
        if item.lead:  # promoted, or first: commit what is queued, then hand over
            self._commit_queued()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit_queued(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for item in batch:
                item.done.set()

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self.db.write() as session:
                for item in batch:
                    item.result = item.write(session)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
        for item in batch:  # one at a time: the failure stays with its own instance
            try:
                with self.db.write() as session:
                    item.result = item.write(session)
                item.error = None
            except Exception as exc:
                item.error = exc


@dataclass
class _Write:
    write: Callable[[Session], Any]
    result: Any = None
    error: Exception | None = None
    lead: bool = False
    done: threading.Event = field(default_factory=threading.Event)
