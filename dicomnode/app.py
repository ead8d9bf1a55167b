"""The running node: receiver, scheduler (timed work) and worker pool.

``Node`` opens the index and spool once, checks the routing rules (a bad rules file
raises :class:`~dicomnode.errors.ConfigError` before anything starts) and starts its
services in order; it stops them in reverse order on SIGTERM/SIGINT so the instance
in flight finishes, a running job goes back to the queue, and nothing is left
half-written.

Roles: ``receiver`` runs the Storage SCP; ``worker`` runs the scheduler (completion
sweep and routing, retry wake-ups, delivery, retention; one per database) and the
worker pool.  ``dicomnode run`` runs both.  With ``[metrics] port`` set, a Prometheus
endpoint (:mod:`dicomnode.metrics`) reports this process's per-stage figures and the
index-wide ones.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Protocol

from dicomnode.config import Settings
from dicomnode.metrics import InstrumentedIngestor, MetricsServer, NodeMetrics
from dicomnode.net.scp import Receiver
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.spool import Spool

logger = logging.getLogger(__name__)


class Service(Protocol):
    """Something the node starts and stops (receiver, scheduler, workers, outbox)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Node:
    """Everything ``dicomnode run`` runs, sharing one index and one spool."""

    def __init__(self, settings: Settings, roles: tuple[str, ...] = ("receiver", "worker")) -> None:
        self.settings = settings
        self.roles = roles
        if "worker" in roles:
            from dicomnode.jobs.modules import load_routing

            rules = load_routing(settings)  # a bad rules file stops us before anything opens
        self.db: Database = open_database(settings.database_url, fsync=settings.node.fsync)
        self.spool = Spool(settings.spool_dir, fsync=settings.node.fsync)
        self.services: list[Service] = []
        self.metrics = NodeMetrics(self.db)
        if settings.metrics.port:
            self.services.append(MetricsServer(self.metrics, settings.metrics.port, settings.metrics.bind))
        if "receiver" in roles:
            self.receiver = Receiver(settings, self.db, self.spool)
            # Observed from outside: the receiver's code knows nothing of metrics.
            self.receiver.ingestor = InstrumentedIngestor(self.receiver.ingestor, self.metrics)  # type: ignore[assignment]
            self.services.append(self.receiver)
        if "worker" in roles:
            from dicomnode.jobs.scheduler import NodeScheduler
            from dicomnode.jobs.worker import ModuleCatalog, Notifier, WorkerPool

            notifier, catalog = Notifier(), ModuleCatalog()
            self.scheduler = NodeScheduler(settings, self.db, rules, notifier, catalog,
                                           metrics=self.metrics)
            self.workers = WorkerPool(settings, self.db, notifier, catalog,
                                      on_finished=lambda: self.scheduler.wake("deliver"),
                                      metrics=self.metrics)
            self.services += [self.scheduler, self.workers]
        self._stop = threading.Event()

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                logger.exception("error while stopping %s", type(service).__name__)
        self.db.dispose()

    def request_stop(self, signum: int = 0, _frame: Any = None) -> None:
        if signum:
            logger.info("received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def run_forever(self) -> None:
        """Start, block until SIGTERM/SIGINT, stop cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()
