"""Timed work on APScheduler 3.x: completion sweep, retry wake-ups, delivery, retention.

One ``BackgroundScheduler`` per database (:class:`~dicomnode.jobs.lock.SchedulerLock`;
a second node waits as a standby and takes over when the holder dies).  Two job
stores:

``default``
    APScheduler's ``SQLAlchemyJobStore`` in the node's database: the slow jobs whose
    next run must survive a restart (retention; later, scheduled retraining).
``memory``
    The every-second sweeps.  They are re-created at each start, so persisting them
    would only cost a write and an fsync per run for nothing.

Persisted jobs hold an importable reference and plain arguments only, so they call
:func:`run_timed` with the name of the work; it finds the running :class:`TimedWork`
in :data:`_RUNNING` (the one mutable module global, for exactly that reason).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from dicomnode.config import Settings
from dicomnode.jobs import queue
from dicomnode.jobs.lock import SchedulerLock
from dicomnode.jobs.modules import without_modules
from dicomnode.jobs.retention import sweep_retention
from dicomnode.jobs.worker import ModuleCatalog, Notifier, WorkerProcess
from dicomnode.routing.completion import awaiting_routing, sweep
from dicomnode.routing.router import Route
from dicomnode.routing.rules import RuleSet
from dicomnode.storage.db import Database
from dicomnode.storage.models import Study

if TYPE_CHECKING:
    from dicomnode.metrics import NodeMetrics

logger = logging.getLogger(__name__)

#: How often a standby node tries to take the scheduler lock.
STANDBY_RETRY_SECONDS = 5.0
#: Delivery runs this often (and at once after each finished job).
DELIVERY_SECONDS = 2.0
#: Retention runs this often; it only deletes what is older than ``retention.days``.
RETENTION_SECONDS = 3600.0

_RUNNING: dict[str, TimedWork] = {}


def resilient_job_store(base: type) -> type:
    """APScheduler's SQLAlchemy job store, made to outlive a database outage.

    APScheduler's main loop catches a failing ``get_due_jobs`` (and retries), but not a
    failing ``get_next_run_time`` or ``update_job`` in the same pass: when the index
    goes away between those calls (PostgreSQL restarted, SQLite locked) the exception
    ends the scheduler's thread without a word, and the node receives but never routes,
    runs or delivers again.  Here those two calls log the error and carry on; the next
    pass (at most one sweep later) reads the store again.
    """
    from sqlalchemy.exc import SQLAlchemyError

    class ResilientJobStore(base):
        def get_next_run_time(self) -> Any:
            try:
                return super().get_next_run_time()
            except SQLAlchemyError as exc:
                logger.warning("scheduler job store unreachable (%s); trying again",
                               type(exc).__name__)
                return None

        def update_job(self, job: Any) -> None:
            try:
                super().update_job(job)
            except SQLAlchemyError as exc:
                # The job keeps its old next run time: it is due again, and runs again,
                # once the store is back (the persisted job, retention, is idempotent).
                logger.warning("could not save job %s's next run (%s)", job.id,
                               type(exc).__name__)

    return ResilientJobStore


def run_timed(name: str) -> None:
    """APScheduler's entry point for every timed job: run ``TimedWork.<name>``."""
    work = _RUNNING.get("node")
    if work is None:
        logger.debug("timed job %s fired with no node running", name)
        return
    getattr(work, name)()


class TimedWork:
    """The node's timed jobs, bound to its database, settings and rules."""

    def __init__(self, settings: Settings, db: Database, rules: RuleSet, notifier: Notifier,
                 catalog: ModuleCatalog, metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.db = db
        self.rules = rules
        self.notifier = notifier
        self.catalog = catalog
        self.modules: dict[str, queue.ModuleInfo] = {}
        self.routing = False  # True once the catalog is known: until then, complete only
        self._errors: dict[str, str] = {}
        #: Set by a wake while a delivery run is under way (APScheduler skips a wake of a
        #: running job): that run goes round again instead of leaving the new results to
        #: the next tick, DELIVERY_SECONDS later.
        self.deliver_again = threading.Event()

    def use_catalog(self, catalog: ModuleCatalog) -> None:
        """Route with the modules a worker process could load; drop the broken ones."""
        self.routing = True
        self.modules = dict(catalog.infos)
        broken = {n: e for n, e in catalog.broken.items() if n in self.rules.modules}
        broken.update({n: "not loadable in the worker process" for n in self.rules.modules
                       if n not in self.modules and n not in broken})
        self.rules = without_modules(self.rules, broken)
        logger.info("routing to modules: %s", ", ".join(sorted(self.rules.modules)) or "none")

    def _enqueue(self, session: Session, study: Study, generation: int,
                 routes: Sequence[Route]) -> list[int]:
        ids = queue.enqueue_routes(session, study, generation, routes, self.modules,
                                   self.settings.jobs.max_attempts)
        if self.metrics is not None:
            self.metrics.observe_routed(study.last_received_at)
        return ids

    def _guard(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one tick; log an error once per distinct message instead of every second."""
        try:
            out = fn()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if self._errors.get(name) != text:
                logger.exception("%s failed", name)
                self._errors[name] = text
            return None
        if name in self._errors:
            logger.info("%s works again", name)
            del self._errors[name]
        return out

    def completion(self) -> None:
        """Complete series and studies; route complete ones (once the modules are known)."""
        if not self.routing and self.catalog.wait(0):
            self.use_catalog(self.catalog)
        report = self._guard("completion sweep", lambda: sweep(
            self.db, self.settings.routing, self.rules, self._enqueue, route=self.routing))
        if report is not None and any(report.routed.values()):
            self.notifier.notify()
        if not self.routing and not self.catalog.demanded() and self._guard(
                "routing demand", lambda: awaiting_routing(self.db)):
            # A study waits to be routed: start the worker processes, which list the modules.
            self.catalog.demand()
            self.notifier.notify()

    def retries(self) -> None:
        """Wake jobs whose backoff elapsed, release waiting ones, recover dead workers' jobs."""
        def tick() -> int:
            n = queue.wake_retries(self.db)
            n += queue.release_all_waiting(self.db)
            n += len(queue.recover_interrupted(self.db, all_local=True))
            return n

        if self._guard("retry wake-up", tick):
            self.notifier.notify()

    def deliver(self) -> None:
        """Send the results outbox's due deliveries (again, if woken meanwhile)."""
        from dicomnode.results import deliver_due

        for _ in range(10):  # bounded: a steady stream of wakes still yields to the timer
            self.deliver_again.clear()
            self._guard("delivery",
                        lambda: deliver_due(self.db, self.settings, self.settings.spool_dir))
            if not self.deliver_again.is_set():
                break

    def retention(self) -> None:
        """Delete studies past ``retention.days`` that have nothing pending."""
        self._guard("retention", lambda: sweep_retention(self.db, self.settings))


class NodeScheduler:
    """The scheduler service of ``dicomnode run`` (worker role).

    ``start`` returns at once: a thread takes the lock (or waits as a standby) and
    starts APScheduler.  Studies are completed from the first sweep on; they are
    routed once a worker process has reported the installed modules (the node
    process itself never imports them, nor torch).
    """

    def __init__(self, settings: Settings, db: Database, rules: RuleSet, notifier: Notifier,
                 catalog: ModuleCatalog, metrics: NodeMetrics | None = None) -> None:
        self.work = TimedWork(settings, db, rules, notifier, catalog, metrics)
        self.catalog = catalog
        self.lock = SchedulerLock(db)
        self._scheduler: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicomnode-scheduler", daemon=True)
        self.running = threading.Event()

    def start(self) -> None:
        """Start the scheduler thread (returns at once)."""
        self._thread.start()

    def _run(self) -> None:
        waited = False
        while not self._stop.is_set():
            try:
                if self.lock.acquire():
                    self._start_scheduler()
                    break
            except Exception as exc:
                # The index is locked or unreachable (SQLite held by another process,
                # PostgreSQL restarting): without this retry the thread would end and
                # nothing would be routed or delivered until the node restarts.
                logger.error("cannot start the scheduler (%s: %s); trying again in %g s",
                             type(exc).__name__, (str(exc).splitlines() or [""])[0][:200],
                             STANDBY_RETRY_SECONDS)
                self._stop.wait(STANDBY_RETRY_SECONDS)
                continue
            if not waited:
                logger.info("another process runs this database's scheduler: standing by")
                waited = True
            self._stop.wait(STANDBY_RETRY_SECONDS)
        if self._stop.is_set():
            return
        if self.work.settings.jobs.workers == 0:
            # No worker pool here: when a study needs routing, one short-lived worker
            # process lists the modules.
            while not self._stop.is_set() and not self.catalog.demanded(1.0):
                pass
            if self._stop.is_set():
                return
            probe = WorkerProcess(self.work.settings, logging.getLogger().getEffectiveLevel(),
                                  self.catalog)
            while not self._stop.is_set() and not probe.dead() and not probe.poll_ready(0.5):
                pass
            probe.stop()

    def _start_scheduler(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        settings = self.work.settings
        # APScheduler logs every run at INFO and every skipped overlap of the 1 s sweep
        # as a WARNING; neither says anything an operator can act on.
        root = logging.getLogger().getEffectiveLevel()
        logging.getLogger("apscheduler").setLevel(max(root, logging.WARNING))
        logging.getLogger("apscheduler.scheduler").setLevel(max(root, logging.ERROR))
        scheduler = BackgroundScheduler(
            jobstores={"default": resilient_job_store(SQLAlchemyJobStore)(
                engine=self.work.db.engine),
                       "memory": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        _RUNNING["node"] = self.work
        now = dt.datetime.now(dt.UTC)
        sweep_s = settings.routing.sweep_seconds
        for name, seconds in (("completion", sweep_s), ("retries", sweep_s),
                              ("deliver", DELIVERY_SECONDS)):
            scheduler.add_job(run_timed, "interval", seconds=seconds, args=[name], id=name,
                              jobstore="memory", next_run_time=now, replace_existing=True)
        try:
            scheduler.start(paused=True)  # creates the job store's table: a write
            # Keep a persisted job's schedule across restarts; only create it when absent.
            if scheduler.get_job("retention", jobstore="default") is None:
                scheduler.add_job("dicomnode.jobs.scheduler:run_timed", "interval",
                                  seconds=RETENTION_SECONDS, args=["retention"], id="retention",
                                  jobstore="default", next_run_time=now,
                                  misfire_grace_time=None)  # run late rather than skip
        except Exception:
            try:
                if scheduler.running:
                    scheduler.shutdown(wait=False)
            except Exception:  # half started: nothing more to undo
                logger.debug("shutting down a half-started scheduler", exc_info=True)
            _RUNNING.pop("node", None)
            raise
        scheduler.resume()
        self._scheduler = scheduler
        self.running.set()
        logger.info("scheduler started: sweep every %g s (routing once a worker process has "
                    "listed the modules)", sweep_s)

    def wake(self, name: str) -> None:
        """Run a memory-store job now (``deliver`` after a finished job)."""
        if name == "deliver":
            self.work.deliver_again.set()
        if self._scheduler is not None:
            try:
                self._scheduler.modify_job(name, jobstore="memory",
                                           next_run_time=dt.datetime.now(dt.UTC))
            except Exception:  # shutting down: the next regular run does it
                logger.debug("cannot wake %s", name, exc_info=True)

    def stop(self) -> None:
        """Shut APScheduler down (waiting for a running tick) and release the lock."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        _RUNNING.pop("node", None)
        self._thread.join(10)
        self.lock.release()
