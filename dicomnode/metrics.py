"""Per-stage figures: a Prometheus endpoint and the same numbers for ``dicomnode status``.

Two kinds of figures, named so an operator can tell them apart:

``dicomnode_*`` (this process)
    Counters and histograms observed as the work happens in this node process:
    instances received and their bytes and store latency (the receiver's ingest),
    completion wait (last instance → study routed, where this process routes), job
    duration per module (the worker slot's view: hand-over to report).  Several node
    processes each report their own; Prometheus sums them.
``dicomnode_index_*`` (the whole index)
    Read from the shared database at scrape time: job and delivery queue depths,
    delivery attempts and failed attempts, stored instances and bytes, refusals.
    Every node process of a cluster reports the same values, so aggregate them with
    ``max``, never ``sum``.

:func:`stage_figures` computes the database side once for both the collector and
``dicomnode status``.
"""
from __future__ import annotations

import datetime as dt
import logging
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicomnode.errors import DicomNodeError
from dicomnode.storage.db import Database
from dicomnode.storage.models import Delivery, Event, Instance, Job, Study, utcnow

logger = logging.getLogger(__name__)

#: Store latency is milliseconds for a small instance, seconds for a 2 GB run.
STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Completion wait is dominated by the quiet periods (10 s / 30 s by default).
WAIT_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600, 1800)
#: Jobs run from a fraction of a second (a small model) to the 600 s timeout.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: ``dicomnode status`` summarises job and completion times of this recent window.
WINDOW = dt.timedelta(hours=24)


class NodeMetrics:
    """This process's counters and histograms, in a registry of their own.

    Parameters
    ----------
    db : Database, optional
        When given, the registry also reports the index-wide figures
        (:class:`IndexCollector`) at each scrape.
    """

    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances_received = Counter(
            "dicomnode_instances_received", "C-STOREs ingested by this process, by outcome "
            "(stored, duplicate, refused)", ["outcome"], registry=r)
        self.bytes_received = Counter(
            "dicomnode_received_bytes", "Bytes of instances stored by this process", registry=r)
        self.store_seconds = Histogram(
            "dicomnode_store_seconds", "Ingest time of one instance (parse, spool rename, index "
            "commit), before the C-STORE answer", buckets=STORE_BUCKETS, registry=r)
        self.completion_wait_seconds = Histogram(
            "dicomnode_completion_wait_seconds", "Last instance of a study received → study routed "
            "to jobs", buckets=WAIT_BUCKETS, registry=r)
        self.job_seconds = Histogram(
            "dicomnode_job_seconds", "Job attempt duration in a worker process, by module and "
            "outcome (done, failed, timeout, lost, requeued)", ["module", "outcome"],
            buckets=JOB_BUCKETS, registry=r)
        for outcome in ("stored", "duplicate", "refused"):
            self.instances_received.labels(outcome)  # export zeros before the first C-STORE
        if db is not None:
            r.register(IndexCollector(db))

    def observe_store(self, outcome: str, size: int, seconds: float) -> None:
        """Record one ingested C-STORE: outcome (stored, duplicate, refused), bytes, time."""
        self.instances_received.labels(outcome).inc()
        if outcome == "stored":
            self.bytes_received.inc(size)
        if outcome != "refused":
            self.store_seconds.observe(max(seconds, 0.0))

    def observe_job(self, module: str, outcome: str, seconds: float) -> None:
        """Record one job attempt's duration."""
        self.job_seconds.labels(module, outcome).observe(max(seconds, 0.0))

    def observe_routed(self, last_received_at: dt.datetime | None) -> None:
        """Record a study's completion wait as it is routed."""
        if last_received_at is not None:
            self.completion_wait_seconds.observe(max((utcnow() - last_received_at).total_seconds(), 0.0))


class InstrumentedIngestor:
    """Wraps the receiver's ingestor: times each ``ingest`` and counts outcome and bytes.

    The receiver (``dicomnode.net.scp``) stays unaware of metrics; ``Node`` swaps its
    ``ingestor`` for this wrapper, which delegates everything else unchanged.
    """

    def __init__(self, inner: Any, metrics: NodeMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def ingest(self, tmp_path: Path, sha256: str, size: int, **kwargs: Any) -> Any:
        """``Ingestor.ingest``, observed."""
        started = time.perf_counter()
        try:
            result = self._inner.ingest(tmp_path, sha256, size, **kwargs)
        except DicomNodeError:
            self._metrics.observe_store("refused", size, time.perf_counter() - started)
            raise
        outcome = "duplicate" if getattr(result, "duplicate", False) else "stored"
        self._metrics.observe_store(outcome, size, time.perf_counter() - started)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------------
# Index-wide figures (the database)
# ---------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"count": len(ordered), "mean_s": round(statistics.fmean(ordered), 3),
            "p95_s": round(p95, 3), "max_s": round(ordered[-1], 3)}


def stage_figures(db: Database, window: dt.timedelta = WINDOW) -> dict[str, Any]:
    """Per-stage figures from the index (all node processes together).

    Returns
    -------
    dict
        ``received`` (instances, bytes, refused), ``completion`` (studies routed in the
        window: wait from last instance to routing), ``jobs`` (by state; duration per
        module of the jobs finished in the window), ``delivery`` (by state, attempts,
        failed attempts).
    """
    since = utcnow() - window
    with db.session() as s:
        instances, size = s.execute(select(func.count(Instance.id),
                                           func.coalesce(func.sum(Instance.size), 0))).one()
        refused = s.scalar(select(func.count(Event.id)).where(Event.kind == "store-refused"))
        waits = [(routed - last).total_seconds() for last, routed in s.execute(
            select(Study.last_received_at, Study.routed_at)
            .where(Study.routed_at.is_not(None), Study.routed_at >= since)).all() if routed and last]
        jobs_by_state = {k: int(v) for k, v in s.execute(
            select(Job.state, func.count()).group_by(Job.state)).all()}
        durations: dict[str, list[float]] = {}
        for module, started, finished in s.execute(
                select(Job.module, Job.started_at, Job.finished_at).where(
                    Job.state == "done", Job.finished_at >= since, Job.started_at.is_not(None))):
            if started is not None and finished is not None:
                durations.setdefault(module, []).append((finished - started).total_seconds())
        deliveries_by_state = {k: int(v) for k, v in s.execute(
            select(Delivery.state, func.count()).group_by(Delivery.state)).all()}
        attempts = int(s.scalar(select(func.coalesce(func.sum(Delivery.attempts), 0))) or 0)
    delivered = deliveries_by_state.get("delivered", 0)
    return {
        "received": {"instances": int(instances), "bytes": int(size), "refused": int(refused or 0)},
        "completion": {"window_hours": window.total_seconds() / 3600,
                       **_summary([max(w, 0.0) for w in waits])},
        "jobs": {"by_state": jobs_by_state,
                 "duration_by_module": {m: _summary(v) for m, v in sorted(durations.items())}},
        "delivery": {"by_state": deliveries_by_state, "attempts": attempts,
                     # each delivered row's last attempt succeeded; every other attempt failed
                     "failed_attempts": attempts - delivered},
    }


class IndexCollector(Collector):
    """Index-wide gauges and counters, read from the database at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()  # one scrape at a time reads the database

    def describe(self) -> list[Any]:
        return []  # no describe-time queries: registration must not touch the database

    def collect(self) -> Iterator[Any]:
        with self._lock:
            try:
                fig = stage_figures(self.db)
            except Exception as exc:  # the index is down: the endpoint still answers
                logger.warning("metrics: index unavailable: %s", exc)
                up = GaugeMetricFamily("dicomnode_index_up", "Whether the index answered the scrape")
                up.add_metric([], 0)
                yield up
                return
        up = GaugeMetricFamily("dicomnode_index_up", "Whether the index answered the scrape")
        up.add_metric([], 1)
        yield up
        inst = CounterMetricFamily("dicomnode_index_instances", "Instances in the index")
        inst.add_metric([], fig["received"]["instances"])
        yield inst
        size = CounterMetricFamily("dicomnode_index_bytes", "Bytes of instances in the index")
        size.add_metric([], fig["received"]["bytes"])
        yield size
        refused = CounterMetricFamily("dicomnode_index_store_refused", "C-STOREs refused (audit rows)")
        refused.add_metric([], fig["received"]["refused"])
        yield refused
        jobs = GaugeMetricFamily("dicomnode_index_jobs", "Jobs by state (queue depth: queued, "
                                 "retry_wait, waiting)", labels=["state"])
        for state in ("waiting", "queued", "running", "retry_wait", "done", "failed", "cancelled"):
            jobs.add_metric([state], fig["jobs"]["by_state"].get(state, 0))
        yield jobs
        deliveries = GaugeMetricFamily("dicomnode_index_deliveries", "Outbox deliveries by state",
                                       labels=["state"])
        for state, n in sorted(fig["delivery"]["by_state"].items()):
            deliveries.add_metric([state], n)
        yield deliveries
        attempts = CounterMetricFamily("dicomnode_index_delivery_attempts", "C-STORE attempts "
                                       "of the outbox, by outcome", labels=["outcome"])
        attempts.add_metric(["ok"], fig["delivery"]["by_state"].get("delivered", 0))
        attempts.add_metric(["failed"], fig["delivery"]["failed_attempts"])
        yield attempts


class MetricsServer:
    """The ``/metrics`` HTTP endpoint (``[metrics] port``, bound to ``[metrics] bind``)."""

    def __init__(self, metrics: NodeMetrics, port: int, bind: str = "127.0.0.1") -> None:
        self.metrics = metrics
        self.port = port
        self.bind = bind
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (raises OSError when the port is taken)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self.port, self.bind, self.metrics.registry)
        logger.info("metrics on http://%s:%d/metrics", self.bind, self.port)

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


__all__ = ["IndexCollector", "InstrumentedIngestor", "MetricsServer", "NodeMetrics", "stage_figures"]
