"""Logging set-up for the CLI and context binding for job and association log lines.

The package itself only adds a ``NullHandler``; :func:`configure_logging` is called
by the CLI.  :func:`bind` puts study, job and AE into every line logged in its
``with`` block (mercure binds a task id the same way), through a ``contextvars``
filter so threads and associations keep their own context.
"""
from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "dicomnode_log_context", default={}  # noqa: B039 - never mutated, replaced on bind
)

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(ctx)s"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        record.ctx = (" [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]") if ctx else ""
        return True


@contextmanager
def bind(**values: Any) -> Iterator[None]:
    """Add ``key=value`` pairs to every log line emitted inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def configure_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Send log lines to stderr (or ``stream``) with the bound context appended."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dicomnode", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ContextFilter())
    handler._dicomnode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO; keep it quiet
    # unless asked, so one bad instance is one line.
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
