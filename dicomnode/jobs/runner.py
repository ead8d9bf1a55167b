"""One job, inside its worker process: select → predict → render → results → done.

:func:`child_main` is the entry point of a worker process (``multiprocessing``
*spawn*): it imports the heavy libraries first and says ``ready``, so the node keeps
one warm process waiting and a job starts without paying for ``import torch``.
It then runs the jobs the node hands it, one at a time; a job that raises ends
the process (whatever the module broke leaves with it) and the node replaces it
after a bounded number of jobs anyway.  The node (:mod:`dicomnode.jobs.worker`)
supervises it: a crash,
a signal (the kernel's OOM killer sends SIGKILL) or a timeout fails the job with
that reason, never the node.

:func:`run_job` does the work and records success itself, in the order that makes
a retry harmless: results are stored first (deterministic UIDs: a second run finds
them and adds nothing), then the job is marked done only if this worker still holds
its lease.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import sysconfig
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ai.core.contract import AIModule, Findings
from dicomnode.config import Settings
from dicomnode.jobs.queue import DONE, RUNNING, finish_done, holds
from dicomnode.jobs.serialize import findings_from_json, findings_to_json
from dicomnode.jobs.views import build_study_view
from dicomnode.log import bind, configure_logging
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.models import Job, Result, utcnow

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


#: Scheduling priority of worker processes below the node (receiver, scheduler).
WORKER_NICENESS = 5


class LeaseLost(Exception):
    """The job is no longer this worker's (cancelled, or taken after the lease expired)."""


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the node dies (even by kill -9).

    Without it a worker orphaned by a crashed node would finish its job while the
    restarted node runs it again.  The parent check closes the race where the node
    died before the prctl call.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})


def _where(exc: BaseException) -> str:
    """`` at file.py:line`` of the innermost frame outside the standard library and
    installed packages: the module's own line, not numpy's or torch's."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)] or list(frames)
    return f" at {Path(own[-1].filename).name}:{own[-1].lineno}" if own else ""


def warm_up(db: Database, catalog: bool) -> tuple[dict[str, tuple[str, tuple[str, ...]]],
                                                    dict[str, str]]:
    """Import what every job needs (torch, the results layer, the modules) before saying ``ready``.

    With ``catalog`` (the node does not know its modules yet) also import every
    installed module and return each loadable one's (level, depends_on) and each
    broken one's error: the node routes with these, so it never imports torch
    itself.  That process also registers the bundled models (activated where no
    version is active yet).
    """
    import torch  # noqa: F401

    import dicomnode.results  # noqa: F401
    from ai.core import registry

    infos: dict[str, tuple[str, tuple[str, ...]]] = {}
    broken: dict[str, str] = {}
    if not catalog:
        # The modules' own imports (MONAI, their networks) now, not in the first job.
        for name in registry.available_modules():
            with contextlib.suppress(Exception):  # the job that needs it reports the error
                registry.get_module(name)
        return infos, broken
    from dicomnode.storage.registry import ensure_bundled

    for name in registry.available_modules():
        try:
            module = registry.get_module(name)
        except Exception as exc:  # reported by the node; a job that needs it fails with it
            broken[name] = f"{type(exc).__name__}: {exc}"
            continue
        infos[name] = (module.level, tuple(module.depends_on))
    if infos:
        ensure_bundled(db, sorted(infos))
    return infos, broken


def child_main(conn: Connection, settings_data: Mapping[str, Any], parent_pid: int,
               log_level: int, catalog: bool = True) -> None:
    """Worker process: warm up, say ready, run the jobs the node sends until told to stop.

    A module's exception is reported as the job's error and the process carries on
    (each job gets a new module instance); a ``MemoryError`` ends the process, whose
    heap may be left fragmented and large.  Signals and crashes end it anyway.
    """
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the node, which stops us
    # Receiving comes first: a modality waits for each C-STORE answer, a model does not.
    os.nice(WORKER_NICENESS)
    configure_logging(log_level)
    settings = Settings.model_validate(dict(settings_data))
    import torch

    torch.set_num_threads(settings.jobs.torch_threads)
    db = open_database(settings.database_url, fsync=settings.node.fsync, upgrade=False)
    infos, broken = warm_up(db, catalog)
    conn.send(("ready", os.getpid(), infos, broken))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if not msg or msg[0] != "run":
            break
        _, job_id, token = msg
        stage: list[str] = ["start"]
        try:
            outcome = run_job(settings, db, job_id, token, stage)
        except LeaseLost as exc:
            conn.send(("lost", str(exc)))
            break
        except Exception as exc:  # everything a module can raise becomes the job's error
            text = f"{type(exc).__name__} in {stage[-1]}{_where(exc)}: {exc}"
            logger.error("job %d failed: %s", job_id, text)
            keep = not isinstance(exc, MemoryError)
            del exc  # drop the frames (and whatever the module allocated) now
            conn.send(("error", text[:4000], keep))
            if not keep:
                break
            continue
        conn.send(("done", outcome))
    conn.close()
    db.dispose()


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------


def prior_findings(db: Database, job: Job, depends_on: Sequence[str]) -> dict[str, list[Findings]]:
    """Findings of the finished jobs this module depends on, same study and generation."""
    if not depends_on:
        return {}
    with db.session() as s:
        rows = s.scalars(select(Job).where(
            Job.study_instance_uid == job.study_instance_uid, Job.generation == job.generation,
            Job.module.in_(list(depends_on)), Job.state == DONE).order_by(Job.id)).all()
    out: dict[str, list[Findings]] = {name: [] for name in depends_on}
    for row in rows:
        out[row.module].extend(findings_from_json(f) for f in (row.summary or {}).get("findings", []))
    return out


def predecessor_headers(db: Database, settings: Settings, job: Job) -> list[Any]:
    """Headers of the SRs an earlier generation's run of this module produced.

    The earlier run is the latest finished job of the same study and module in an
    older generation that shares an input series (or any, for a study-level job).
    Whether they are already marked superseded does not matter, so a retried job
    finds the same predecessors and so rebuilds the same UIDs.
    """
    if job.generation <= 1:
        return []
    import pydicom

    with db.session() as s:
        earlier = s.scalars(select(Job).where(
            Job.study_instance_uid == job.study_instance_uid, Job.module == job.module,
            Job.generation < job.generation, Job.state == DONE)
            .order_by(Job.generation.desc(), Job.id)).all()
        mine = set(job.series_uids or [])
        chosen = [j for j in earlier if not mine or mine & set(j.series_uids or [])]
        if not chosen:
            return []
        newest = chosen[0].generation
        ids = [j.id for j in chosen if j.generation == newest]
        paths = s.scalars(select(Result.path).where(Result.job_fk.in_(ids), Result.kind == "SR")
                          .order_by(Result.id)).all()
    out = []
    for rel in paths:
        try:
            out.append(pydicom.dcmread(settings.spool_dir / rel, stop_before_pixels=True))
        except OSError as exc:  # removed by retention: supersession cannot name it
            logger.warning("predecessor %s unreadable: %s", rel, exc)
    return out


def model_path(db: Database, module: AIModule) -> Path:
    """The active registered version of ``module``, else its bundled model."""
    from dicomnode.storage.registry import active_version

    row = active_version(db, module.name)
    if row is not None:
        return Path(row.path)
    path = module.bundled_model_path()
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"{module.name} has no active model version and no bundled "
                                f"model at {path}")
    return path


def _newer_generation(db: Database, job: Job) -> int | None:
    with db.session() as s:
        return s.scalar(select(Job.generation).where(
            Job.study_instance_uid == job.study_instance_uid, Job.module == job.module,
            Job.generation > job.generation, Job.state != "cancelled").limit(1))


def run_job(settings: Settings, db: Database, job_id: int, token: str,
            stage: list[str] | None = None) -> dict[str, Any]:
    """Run one claimed job to the end; returns what the worker logs.

    Raises
    ------
    LeaseLost
        The job was cancelled or re-assigned while it ran; nothing was marked.
    Exception
        Whatever the module raised; the worker records it as a failed attempt.
    """
    from ai.core.models import load_model
    from ai.core.registry import get_module
    from dicomnode.results import BuildOptions, build_results, store_results

    stage = stage if stage is not None else []
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[f"{name}_s"] = round(now - since, 4)
        return now

    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != RUNNING or job.lease_owner != token:
            raise LeaseLost(f"job {job_id} is not running under this worker's lease")
        s.expunge(job)
    if job.started_at is not None:
        # queued: routing → claim; handover: claim → this process running it.
        timings["queued_s"] = round((job.started_at - job.created_at).total_seconds(), 4)
        timings["handover_s"] = round((utcnow() - job.started_at).total_seconds(), 4)
    with bind(study=job.study_instance_uid, job=job_id, module=job.module):
        logger.info("running attempt %d (generation %d, %d series)", job.attempts, job.generation,
                    len(job.series_uids or []))
        stage.append("module import")
        module = get_module(job.module)
        stage.append("select")
        t = time.monotonic()
        with db.session() as s:
            view = build_study_view(s, settings.spool_dir, job.study_instance_uid,
                                    None if module.level == "study" else job.series_uids)
        selection = module.select(view, prior_findings(db, job, module.depends_on))
        t = lap("select", t)
        if not selection.cases:
            reason = selection.reason or "the module selected no case"
            logger.info("nothing to do: %s", reason)
            with db.write() as s:
                if not finish_done(s, job_id, token, reason=reason,
                                   summary={"cases": 0, "findings": []},
                                   timings={**timings, "total_s": round(time.monotonic() - t0, 4)}):
                    raise LeaseLost(f"job {job_id} lost its lease")
            return {"cases": 0, "reason": reason, "results": 0}

        stage.append("model load")
        model = load_model(model_path(db, module), module, settings.jobs.device)
        t = lap("model", t)
        predecessors = predecessor_headers(db, settings, job)
        options = BuildOptions(sr_storage=settings.results.sr_storage,  # [results] settings
                               gsps=settings.results.gsps,
                               summary_sr=settings.results.summary_sr)
        objects, findings_out, predict_s, render_s, build_s = [], [], 0.0, 0.0, 0.0
        for case in selection.cases:
            stage.append("predict")
            a = time.monotonic()
            findings = module.predict(case, model)
            stage.append("render")
            b = time.monotonic()
            images = module.render(case, findings)
            stage.append("build results")
            c = time.monotonic()
            objects.extend(build_results(findings, images, [i.path for i in case.inputs],
                                         settings, predecessor=predecessors or None,
                                         options=options))
            predict_s, render_s = predict_s + b - a, render_s + c - b
            build_s += time.monotonic() - c
            findings_out.append(findings_to_json(findings))
        timings.update(predict_s=round(predict_s, 4), render_s=round(render_s, 4),
                       build_s=round(build_s, 4))
        t = time.monotonic()

        newer = _newer_generation(db, job)
        if newer is not None:
            # The study changed while we ran: these results would mix generations.
            reason = f"superseded by generation {newer} before it finished; results discarded"
            with db.write() as s:
                finish_done(s, job_id, token, reason=reason, summary={"cases": 0},
                            timings=timings, model_version=model.version)
            logger.info("%s", reason)
            return {"cases": 0, "reason": reason, "results": 0}

        stage.append("store results")
        if not holds(db, job_id, token):  # cancelled meanwhile: store nothing
            raise LeaseLost(f"job {job_id} was cancelled or re-assigned before its results were stored")
        stored = store_results(db, settings.spool_dir, job_id, objects, job.destinations or [])
        lap("store", t)
        timings["total_s"] = round(time.monotonic() - t0, 4)
        summary = {"cases": len(selection.cases), "findings": findings_out,
                   "results": [r.sop_instance_uid for r in stored],
                   "superseded": sorted({u for o in objects for u in o.supersedes}),
                   "model_sha256": model.sha256}
        with db.write() as s:
            if not finish_done(s, job_id, token, summary=summary, timings=timings,
                               model_version=model.version):
                raise LeaseLost(f"job {job_id} lost its lease before it was marked done")
        logger.info("done: %d case(s), %d result object(s) in %.2f s", len(selection.cases),
                    len(stored), timings["total_s"])
        return {"cases": len(selection.cases), "results": len(stored)}
