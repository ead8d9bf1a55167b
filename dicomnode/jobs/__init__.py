"""Jobs: the persistent queue, the worker processes that run modules, and the timed work.

- :mod:`~dicomnode.jobs.queue`: ``Job`` rows (waiting → queued → running → done | failed,
  retry_wait, cancelled), claims with leases, backoff, dependencies, operator actions.
- :mod:`~dicomnode.jobs.worker`: the node-side pool; each slot keeps one warm worker
  process (``multiprocessing`` spawn) and supervises the job it hands it.
- :mod:`~dicomnode.jobs.runner`: inside the worker process: StudyView from the index,
  ``select`` / ``predict`` / ``render``, results stored, job marked done.
- :mod:`~dicomnode.jobs.scheduler`: APScheduler (completion sweep, retry wake-ups,
  delivery, retention), one per database (:mod:`~dicomnode.jobs.lock`).
- :mod:`~dicomnode.jobs.retention`, :mod:`~dicomnode.jobs.views`,
  :mod:`~dicomnode.jobs.serialize`, :mod:`~dicomnode.jobs.modules`: the pieces they use.
"""
