"""``dicomnode jobs list|show|retry|cancel``: the AI job queue."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from dicomnode.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    fail,
    open_index,
    print_json,
    print_table,
    settings_from,
)

jobs_app = typer.Typer(help="AI jobs: queue, runs, retries.", no_args_is_help=True)

def _short(uid: str, n: int = 28) -> str:
    return uid if len(uid) <= n else "…" + uid[-(n - 1):]


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


@jobs_app.command("list")
def list_cmd(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only jobs of this Study Instance UID")] = None,
    module: Annotated[str | None, typer.Option("--module", help="Only jobs of this module")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most recent N")] = 100,
) -> None:
    """List jobs, newest first (--json: id, study, module, state, attempts, error …)."""
    from dicomnode.jobs.queue import STATES, job_json, list_jobs

    if state is not None and state not in STATES:
        fail(f"--state must be one of {', '.join(STATES)}", 2)
    db = open_index(settings_from(config, data_dir))
    jobs = list_jobs(db, state=state, study=study, module=module, limit=limit)
    if json_out:
        print_json([job_json(j) for j in jobs])
        return
    from rich.markup import escape

    print_table(
        ((j.id, _short(j.study_instance_uid), j.module, j.generation, j.state,
          f"{j.attempts}/{j.max_attempts}", _when(j.created_at),
          escape((j.error or j.reason)[:90])) for j in jobs),
        ["ID", "Study", "Module", "Gen", "State", "Attempts", "Created (UTC)", "Error / reason"],
        title=f"{len(jobs)} job(s)",
    )


@jobs_app.command("show")
def show_cmd(
    job_id: Annotated[int, typer.Argument(help="Job id")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show one job: inputs, attempts, timings, findings summary, results and deliveries."""
    from sqlalchemy import select

    from dicomnode.jobs.queue import job_json
    from dicomnode.storage.models import Delivery, Job, Result

    db = open_index(settings_from(config, data_dir))
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            fail(f"no job {job_id}")
        info = job_json(job)
        info["timings"] = job.timings
        info["summary"] = {k: v for k, v in (job.summary or {}).items() if k != "findings"}
        info["findings"] = [{"summary": f.get("summary", ""), "n": len(f.get("findings", [])),
                             "gate": f.get("gate", {})} for f in (job.summary or {}).get("findings", [])]
        results = s.execute(select(Result).where(Result.job_fk == job_id).order_by(Result.id)).scalars().all()
        info["results"] = []
        for r in results:
            deliveries = s.scalars(select(Delivery).where(Delivery.result_fk == r.id)).all()
            info["results"].append({
                "kind": r.kind, "sop_instance_uid": r.sop_instance_uid, "superseded_by": r.superseded_by,
                "deliveries": [{"destination": d.destination, "state": d.state, "attempts": d.attempts,
                                "last_error": d.last_error} for d in deliveries]})
    if json_out:
        print_json(info)
        return
    for key in ("id", "study", "module", "state", "attempts", "max_attempts", "generation", "rule",
                "model_version", "created_at", "started_at", "finished_at", "next_attempt_at",
                "error", "reason"):
        value = info[key]
        if value not in (None, ""):
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    console.print(f"[bold]series[/bold]: {', '.join(info['series'])}", highlight=False)
    console.print(f"[bold]destinations[/bold]: {', '.join(info['destinations']) or 'none'}")
    if info["timings"]:
        console.print("[bold]timings[/bold]: " + ", ".join(f"{k} {v}" for k, v in info["timings"].items()))
    for f in info["findings"]:
        console.print(f"[bold]findings[/bold]: {f['n']} — {f['summary']}", highlight=False)
    for r in info["results"]:
        sent = ", ".join(f"{d['destination']} {d['state']}" for d in r["deliveries"]) or "not sent"
        sup = f" (superseded by {r['superseded_by']})" if r["superseded_by"] else ""
        console.print(f"  {r['kind']} {r['sop_instance_uid']}{sup}: {sent}", highlight=False)


@jobs_app.command("retry")
def retry_cmd(
    job_id: Annotated[int, typer.Argument(help="Job id")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Run a done job again too")] = False,
) -> None:
    """Queue a failed or cancelled job again (its attempts start over)."""
    from dicomnode.jobs.queue import JobStateError, job_json, retry

    db = open_index(settings_from(config, data_dir))
    try:
        job = retry(db, job_id, force=force)
    except (LookupError, JobStateError) as exc:
        fail(str(exc))
    if json_out:
        print_json(job_json(job))
    else:
        console.print(f"job {job.id} queued again ({job.module}, study {job.study_instance_uid})")


@jobs_app.command("cancel")
def cancel_cmd(
    job_id: Annotated[int, typer.Argument(help="Job id")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Cancel an unfinished job (a running one is stopped by its worker within seconds)."""
    from dicomnode.jobs.queue import JobStateError, cancel, job_json

    db = open_index(settings_from(config, data_dir))
    try:
        job = cancel(db, job_id)
    except (LookupError, JobStateError) as exc:
        fail(str(exc))
    if json_out:
        print_json(job_json(job))
    else:
        console.print(f"job {job.id} cancelled")


def register(app: typer.Typer) -> None:
    """Add ``jobs`` to the root app."""
    app.add_typer(jobs_app, name="jobs")
