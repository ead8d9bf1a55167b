"""``dicomnode status``: what the node holds and what it is doing."""
from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from dicomnode.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    open_index,
    print_json,
    settings_from,
)


def collect(db: Any) -> dict[str, Any]:
    """Counts by table and state, job queue depth, last job failures, pending deliveries, refusals."""
    from sqlalchemy import func, select

    from dicomnode.storage.models import Delivery, Event, Instance, Job, Series, Study

    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=24)
    with db.session() as s:
        out: dict[str, Any] = {
            "studies": s.scalar(select(func.count(Study.id))),
            "series": s.scalar(select(func.count(Series.id))),
            "instances": s.scalar(select(func.count(Instance.id))),
            "bytes": int(s.scalar(select(func.coalesce(func.sum(Instance.size), 0)))),
            "studies_by_state": dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all()),
            "jobs_by_state": dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all()),
            "deliveries_by_state": dict(
                s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()),
            "refused_last_24h": s.scalar(select(func.count(Event.id)).where(
                Event.kind == "store-refused", Event.at >= since)),
        }
        recent = s.scalars(select(Event).where(Event.kind == "store-refused")
                           .order_by(Event.at.desc()).limit(5)).all()
        out["recent_refusals"] = [
            {"at": e.at.isoformat(), "calling_ae": e.calling_ae, "peer": e.peer,
             "status": e.detail.get("status"), "reason": e.detail.get("reason")} for e in recent
        ]
        # Queue depth: what is waiting to run, and the oldest such job (how far behind we are).
        waiting = ("queued", "retry_wait", "waiting")
        out["queue"] = {
            "depth": sum(v for k, v in out["jobs_by_state"].items() if k in waiting),
            "running": out["jobs_by_state"].get("running", 0),
            "by_module": {f"{m}/{st}": n for m, st, n in s.execute(
                select(Job.module, Job.state, func.count()).where(Job.state.in_((*waiting, "running")))
                .group_by(Job.module, Job.state)).all()},
            "oldest_queued_at": s.scalar(select(func.min(Job.created_at)).where(Job.state == "queued")),
        }
        failures = s.scalars(select(Job).where(Job.error != "", Job.state.in_(("failed", "retry_wait")))
                             .order_by(Job.id.desc()).limit(5)).all()
        out["last_failures"] = [
            {"id": j.id, "study": j.study_instance_uid, "module": j.module, "state": j.state,
             "attempts": j.attempts, "error": j.error,
             "at": (j.finished_at or j.started_at or j.created_at).isoformat()} for j in failures
        ]
    from dicomnode.metrics import stage_figures
    from dicomnode.results.outbox import pending_summary

    out["deliveries"] = [d.as_json() for d in pending_summary(db)]
    # The per-stage figures the metrics endpoint reports as dicomnode_index_* (same code).
    out["stages"] = stage_figures(db)
    return out


def _print_stages(stages: dict[str, Any]) -> None:
    def span(f: dict[str, Any]) -> str:
        if not f["count"]:
            return "none yet"
        return f"{f['count']}, mean {f['mean_s']:.2f} s, p95 {f['p95_s']:.2f} s, max {f['max_s']:.2f} s"

    rec, comp, jobs, dlv = stages["received"], stages["completion"], stages["jobs"], stages["delivery"]
    console.print("[bold]stages[/bold] (index-wide; times over the last "
                  f"{comp['window_hours']:g} h)")
    console.print(f"  received: {rec['instances']} instances, {rec['bytes']} bytes, "
                  f"{rec['refused']} refused")
    console.print(f"  completion wait (last instance → routed): {span(comp)}")
    for module, f in jobs["duration_by_module"].items():
        console.print(f"  job duration {module}: {span(f)}", highlight=False, markup=False)
    console.print(f"  delivery: {dlv['attempts']} attempts, {dlv['failed_attempts']} failed; "
                  + (", ".join(f"{k} {v}" for k, v in sorted(dlv["by_state"].items())) or "none"))


def status(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Show counts, queues, deliveries and recent failures."""
    settings = settings_from(config, data_dir)
    db = open_index(settings)
    info = {"aetitle": settings.node.aetitle, "port": settings.node.port,
            "database": settings.database_url, "spool": str(settings.spool_dir), **collect(db)}
    if json_out:
        print_json(info)
        return
    console.print(f"[bold]{info['aetitle']}[/bold] port {info['port']}  index {info['database']}")
    console.print(f"{info['studies']} studies, {info['series']} series, {info['instances']} instances, "
                  f"{info['bytes'] / 1e6:.1f} MB")
    for key in ("studies_by_state", "jobs_by_state", "deliveries_by_state"):
        if info[key]:
            console.print(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in info[key].items()))
    queue = info["queue"]
    console.print(f"job queue: {queue['depth']} waiting, {queue['running']} running"
                  + (f", oldest queued since {queue['oldest_queued_at']}" if queue["oldest_queued_at"] else "")
                  + "".join(f"; {k} {v}" for k, v in sorted(queue["by_module"].items())))
    for f in info["last_failures"]:
        console.print(f"  job {f['id']} {f['module']} {f['state']} ({f['attempts']} attempts): "
                      f"{f['error'][:120]}", highlight=False, markup=False)
    for d in info["deliveries"]:
        if d["pending"] or d["failed"]:
            console.print(f"deliveries to {d['destination']}: {d['pending']} pending, {d['failed']} "
                          f"failed, next attempt {d['next_attempt_at']}"
                          + (f": {d['last_error'][:100]}" if d["last_error"] else ""),
                          highlight=False, markup=False)
    _print_stages(info["stages"])
    console.print(f"refused in the last 24 h: {info['refused_last_24h']}")
    for r in info["recent_refusals"]:
        console.print(f"  {r['at']} {r['calling_ae']}@{r['peer']} 0x{(r['status'] or 0):04X} {r['reason']}")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
