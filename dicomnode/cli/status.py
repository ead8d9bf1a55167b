"""``dicomnode status``: what the node holds and what it is doing."""
from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from dicomnode.cli.common import ConfigOpt, DataDirOpt, JsonOpt, console, open_index, print_json, settings_from


def collect(db: Any) -> dict[str, Any]:
    """Counts by table and state, recent refusals; later parts add queues and deliveries."""
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
    return out


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
    console.print(f"refused in the last 24 h: {info['refused_last_24h']}")
    for r in info["recent_refusals"]:
        console.print(f"  {r['at']} {r['calling_ae']}@{r['peer']} 0x{(r['status'] or 0):04X} {r['reason']}")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
