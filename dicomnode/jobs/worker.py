"""The worker pool: claim jobs, run each in its own process, record how it ended.

Each of ``jobs.workers`` slots is a thread of the node that keeps one *warm* worker
process (``multiprocessing`` spawn, :func:`dicomnode.jobs.runner.child_main`) which
has already imported torch and the modules.  A slot claims a job only when its
process is ready, hands the job over, then supervises:

- renews the job's lease while the process runs (a lost lease — the operator
  cancelled the job — stops the process);
- kills it after ``jobs.job_timeout_seconds``;
- when the process dies without reporting (a segfault, the kernel's OOM killer),
  records the attempt as failed with the exit code or signal, and the queue retries
  it with backoff as configured.

The node itself never runs model code (nor imports torch), so none of this can
take it down.  A process stays warm for the next job (up to
``jobs.max_jobs_per_process``, then it is replaced at once, while idle) unless it died,
ran out of memory or lost its lease; then the slot starts a fresh one.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dicomnode.config import Settings
from dicomnode.jobs import queue
from dicomnode.jobs.runner import child_main
from dicomnode.log import bind
from dicomnode.storage.db import Database
from dicomnode.storage.models import utcnow

if TYPE_CHECKING:
    from dicomnode.metrics import NodeMetrics

logger = logging.getLogger(__name__)

#: Default lease of a running job (``jobs.lease_seconds``); renewed every lease / 6 by its slot.
LEASE_SECONDS = 60.0
#: How often a slot checks (by a read) that its running job was not cancelled.
CHECK_SECONDS = 1.0
#: How often an idle slot looks for work when nobody told it about any.
POLL_SECONDS = 1.0
#: Wait before starting a worker process again after one failed to start.
RESPAWN_BACKOFF_SECONDS = 5.0
#: How long a slot waits for the report of a job its process has marked done.
DONE_REPORT_SECONDS = 30.0


class Notifier:
    """Wakes idle slots at once when jobs are queued (they poll anyway, slowly)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def notify(self) -> None:
        """Wake every waiting slot."""
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until :meth:`notify` is called after ``seen`` (or ``timeout``); returns the count."""
        with self._cond:
            self._cond.wait_for(lambda: self._count != seen, timeout)
            return self._count


def exit_reason(code: int | None) -> str:
    """Why a worker process ended, for the job's error."""
    if code is None:
        return "worker process did not end"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} without reporting"


class ModuleCatalog:
    """The installed modules' (level, depends_on), as a warm worker process reported them.

    The node routes with it but never imports a module itself (that would import
    torch into the receiver's process); the first worker process to start fills it.
    No worker process starts before there is *demand*: a study waiting to be routed
    or a job to run.  A node that only receives (or a test that never lets a study
    complete) never pays for importing torch and the modules.
    """

    def __init__(self) -> None:
        self._filled = threading.Event()
        self._demand = threading.Event()
        self.infos: dict[str, queue.ModuleInfo] = {}
        self.broken: dict[str, str] = {}

    def demand(self) -> None:
        """Ask for worker processes (and so for the catalog) from now on."""
        if not self._demand.is_set():
            logger.info("work to do: starting worker processes")
        self._demand.set()

    def demanded(self, timeout: float | None = 0) -> bool:
        """Whether worker processes are wanted (waiting up to ``timeout`` seconds)."""
        return self._demand.wait(timeout)

    def fill(self, infos: dict[str, tuple[str, tuple[str, ...]]], broken: dict[str, str]) -> None:
        """Record what a worker process reported (the first report wins)."""
        if self._filled.is_set():
            return
        self.infos = {n: queue.ModuleInfo(n, level, tuple(deps)) for n, (level, deps) in infos.items()}
        self.broken = dict(broken)
        self._filled.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the catalog is known (waiting up to ``timeout`` seconds for it)."""
        return self._filled.wait(timeout)


class WorkerProcess:
    """One spawned worker process and our end of its pipe."""

    def __init__(self, settings: Settings, log_level: int, catalog: ModuleCatalog) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=child_main, name="dicomnode-worker",
            args=(child_conn, settings.model_dump(mode="json"), os.getpid(), log_level,
                  not catalog.wait(0)),
            daemon=True,
        )
        self.proc.start()
        child_conn.close()
        self.catalog = catalog
        self.ready = False
        self.jobs = 0

    def poll_ready(self, timeout: float) -> bool:
        """Whether the process has said ``ready`` (waiting up to ``timeout`` seconds)."""
        if not self.ready and self.conn.poll(timeout):
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return False
            if msg and msg[0] == "ready":
                self.ready = True
                self.catalog.fill(msg[2], msg[3])
        return self.ready

    def dead(self) -> bool:
        """Whether the process has ended."""
        return self.proc.exitcode is not None

    def stop(self) -> None:
        """Ask the process to exit, then terminate, then kill it; always reaped."""
        if self.proc.is_alive():
            try:
                self.conn.send(("exit",))
            except OSError:
                pass
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class _Slot(threading.Thread):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__(name=f"dicomnode-slot-{index}", daemon=True)
        self.pool = pool
        self.child: WorkerProcess | None = None
        self.successor: WorkerProcess | None = None  # warming up to replace ``child``
        self.outcome = ""  # how the current attempt ended, for the job-duration histogram

    # The process must be started by this thread: PR_SET_PDEATHSIG in the child fires
    # when the *thread* that forked it ends, so a short-lived helper thread would kill it.
    def _ensure_child(self) -> WorkerProcess | None:
        child = self.child
        if child is not None and child.dead():
            if not child.ready:
                self._failed_to_start(child)
            child.stop()
            self.child, self.successor = self.successor, None
            child = self.child
        if child is not None and child.jobs >= self.pool.settings.jobs.max_jobs_per_process:
            # Bounded reuse: whatever a module leaks is returned now and then.  The
            # successor warms up (torch, the modules: seconds) while this one still runs
            # jobs, and takes over once it is ready, so no job waits for a warm-up.
            # Replaced at the next claim instead, a study waited for it: the p95 of
            # mtici's push-to-result latency (its three jobs straddled the swap).
            if self.successor is None and not self.pool._stop.is_set():
                self.successor = WorkerProcess(self.pool.settings, self.pool.log_level, self.pool.catalog)
            successor = self.successor
            if successor is not None and successor.poll_ready(0):
                logger.info("worker process %d replaced after %d jobs by %d", child.proc.pid, child.jobs,
                            successor.proc.pid)
                child.stop()
                child = self.child = successor
                self.successor = None
            elif successor is not None and successor.dead():  # this one goes on meanwhile
                successor.stop()
                self.successor = None
                self._failed_to_start(successor)
        if child is None and not self.pool._stop.is_set():
            child = self.child = WorkerProcess(self.pool.settings, self.pool.log_level, self.pool.catalog)
        return child

    def _failed_to_start(self, process: WorkerProcess) -> None:
        logger.error("worker process failed to start: %s", exit_reason(process.proc.exitcode))
        self.pool._stop.wait(RESPAWN_BACKOFF_SECONDS)

    def run(self) -> None:
        """Keep a warm process, claim a job when it is ready, see the job through; repeat."""
        seen = 0
        pool = self.pool
        while not pool._stop.is_set():
            try:
                if not pool.catalog.demanded():
                    if queue.has_work(pool.db):  # queued by another node, or by the CLI
                        pool.catalog.demand()
                    else:
                        seen = pool.notifier.wait(seen, POLL_SECONDS)
                    continue
                child = self._ensure_child()
                if child is None or not child.poll_ready(0.5):
                    continue
                claim = queue.claim(self.pool.db, pool.lease_seconds)
                if claim is None:
                    seen = self.pool.notifier.wait(seen, POLL_SECONDS)
                    continue
                child.jobs += 1
                if not self._observed(claim, child):
                    child.stop()
                    self.child = None
                elif child.jobs >= pool.settings.jobs.max_jobs_per_process:
                    self._ensure_child()  # start its successor now, not at the next claim
            except Exception:
                # A database hiccup must not end the slot; the job's lease protects it.
                logger.exception("worker slot error")
                self.pool._stop.wait(1.0)
        for process in (self.child, self.successor):
            if process is not None:
                process.stop()

    def _observed(self, claim: queue.Claim, child: WorkerProcess) -> bool:
        """:meth:`_supervise`, with the attempt's duration and outcome recorded."""
        started = time.monotonic()
        self.outcome = "lost"
        try:
            return self._supervise(claim, child)
        finally:
            if self.pool.metrics is not None:
                self.pool.metrics.observe_job(claim.module, self.outcome, time.monotonic() - started)

    def _supervise(self, claim: queue.Claim, child: WorkerProcess) -> bool:
        """Hand ``claim`` to ``child`` and see it through; True if the process stays usable."""
        pool = self.pool
        with bind(study=claim.study_instance_uid, job=claim.job_id, module=claim.module):
            logger.info("started attempt %d in worker process %d", claim.attempt, child.proc.pid)
            child.conn.send(("run", claim.job_id, claim.token))
            started = time.monotonic()
            deadline = started + pool.settings.jobs.job_timeout_seconds
            lease = pool.lease_seconds
            renew_at = started + lease / 6
            check_at = started + CHECK_SECONDS
            message: Any = None
            while True:
                if child.conn.poll(0.2):
                    try:
                        message = child.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    break
                if child.dead():
                    break
                now = time.monotonic()
                if pool._stop.is_set():
                    child.stop()
                    queue.requeue(pool.db, claim.job_id, claim.token, "node stopped during the run")
                    self.outcome = "requeued"
                    logger.info("node stopping: job queued again")
                    return False
                if now > deadline:
                    child.stop()
                    self.outcome = "timeout"
                    self._failed(claim, f"timed out after {pool.settings.jobs.job_timeout_seconds:g} s"
                                        " (jobs.job_timeout_seconds)")
                    return False
                if now > check_at:
                    check_at = now + CHECK_SECONDS
                    mine = queue.holds(pool.db, claim.job_id, claim.token)
                    if mine and now > renew_at:
                        renew_at = now + lease / 6
                        mine = queue.renew(pool.db, claim.job_id, claim.token, lease)
                    if not mine and queue.state_of(pool.db, claim.job_id) == queue.DONE \
                            and child.conn.poll(DONE_REPORT_SECONDS):
                        # The process finished the job (done clears the lease) between our
                        # last poll and this check: read its report and keep it warm.
                        continue
                    if not mine:
                        child.stop()
                        logger.warning("lease lost (cancelled?): worker process stopped")
                        return False
            if message is not None and message[0] == "done":
                self.outcome = "done"
                pool.on_job_finished()
                return True
            if message is not None and message[0] == "error":
                self.outcome = "failed"
                self._failed(claim, str(message[1]))
                return bool(message[2])  # the process survives a module's exception
            child.proc.join(10)
            if message is None:
                self.outcome = "failed"
                self._failed(claim, exit_reason(child.proc.exitcode))
            else:
                logger.warning("%s", message[1])
            return False

    def _failed(self, claim: queue.Claim, error: str) -> None:
        self.pool.failures += 1
        queue.finish_failed(self.pool.db, claim.job_id, claim.token, error,
                            self.pool.settings.jobs.retry_backoff_seconds)
        self.pool.on_job_finished()


class WorkerPool:
    """``jobs.workers`` slots, each running one job at a time in a worker process.

    Parameters
    ----------
    settings : Settings
        ``jobs`` (workers, timeouts, backoff) and what the worker processes need.
    db : Database
        The index.
    notifier : Notifier
        Set when jobs are queued (routing, retry wake-ups) so idle slots claim at once.
    catalog : ModuleCatalog
        Filled by the first worker process that starts (the modules it could load).
    on_finished : callable, optional
        Called after each job ends (the node wakes the outbox).
    metrics : NodeMetrics, optional
        Receives each attempt's duration per module and outcome.
    """

    def __init__(self, settings: Settings, db: Database, notifier: Notifier,
                 catalog: ModuleCatalog, on_finished: Callable[[], None] | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.db = db
        self.notifier = notifier
        self.catalog = catalog
        self._on_finished = on_finished
        self._stop = threading.Event()
        self._slots: list[_Slot] = []
        self.failures = 0
        self.lease_seconds = settings.jobs.lease_seconds
        self.log_level = logging.getLogger().getEffectiveLevel()

    def on_job_finished(self) -> None:
        """Run the after-job hook (never raises)."""
        if self._on_finished is not None:
            try:
                self._on_finished()
            except Exception:
                logger.exception("after-job hook failed")

    def start(self) -> None:
        """Queue again what a previous run left running, then start the slots."""
        recovered = queue.recover_interrupted(self.db, utcnow(), all_local=True)
        if recovered:
            logger.warning("queued again %d job(s) interrupted by the last shutdown: %s",
                           len(recovered), ", ".join(map(str, recovered)))
        if queue.has_work(self.db):
            self.catalog.demand()
        self._slots = [_Slot(self, i) for i in range(self.settings.jobs.workers)]
        for slot in self._slots:
            slot.start()
        logger.info("worker pool: %d slot(s)", len(self._slots))

    def stop(self) -> None:
        """Stop the slots: running jobs go back to the queue, worker processes end."""
        self._stop.set()
        self.notifier.notify()
        for slot in self._slots:
            slot.join(30)


__all__ = ["ModuleCatalog", "Notifier", "WorkerPool", "exit_reason"]
