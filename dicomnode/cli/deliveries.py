"""``dicomnode deliveries list|retry``: results on their way to the PACS.

A delivery whose attempts ran out is ``failed`` and stays in the index (nothing is
dropped): one that failed because its destination could not be reached is tried again
on its own at the capped backoff; one the PACS refused waits for an operator, who
re-queues it with ``dicomnode deliveries retry`` once the cause is fixed.
"""
from __future__ import annotations

from typing import Annotated

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

deliveries_app = typer.Typer(help="Result deliveries to PACS destinations.",
                             no_args_is_help=True)
STATES = ("pending", "delivered", "failed")


@deliveries_app.command("list")
def list_cmd(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    state: Annotated[str | None, typer.Option("--state", help="Only this state")] = None,
    destination: Annotated[str | None, typer.Option("--destination",
                                                    help="Only this destination")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most recent N")] = 100,
) -> None:
    """List deliveries, newest first (--json: id, destination, state, attempts, error …)."""
    from sqlalchemy import select

    from dicomnode.storage.models import Delivery, Result

    if state is not None and state not in STATES:
        fail(f"--state must be one of {', '.join(STATES)}", 2)
    db = open_index(settings_from(config, data_dir))
    stmt = (select(Delivery, Result).join(Result, Result.id == Delivery.result_fk)
            .order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit))
    if state is not None:
        stmt = stmt.where(Delivery.state == state)
    if destination is not None:
        stmt = stmt.where(Delivery.destination == destination)
    with db.session() as s:
        rows = [{"id": d.id, "destination": d.destination, "state": d.state,
                 "attempts": d.attempts, "last_status": d.last_status,
                 "last_error": d.last_error, "kind": r.kind, "module": r.module,
                 "study_instance_uid": r.study_instance_uid,
                 "sop_instance_uid": r.sop_instance_uid,
                 "created_at": d.created_at.isoformat() if d.created_at else None,
                 "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
                 "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
                for d, r in s.execute(stmt).all()]
    db.dispose()
    if json_out:
        print_json(rows)
        return
    from rich.markup import escape

    print_table(((r["id"], r["destination"], r["module"], r["kind"], r["state"], r["attempts"],
                  (r["created_at"] or "")[:19], escape(r["last_error"][:80])) for r in rows),
                ["ID", "Destination", "Module", "Kind", "State", "Attempts", "Created (UTC)",
                 "Last error"], title=f"{len(rows)} deliver(ies)")


@deliveries_app.command("retry")
def retry_cmd(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    destination: Annotated[str | None, typer.Option("--destination",
                                                    help="Only this destination")] = None,
) -> None:
    """Queue every failed delivery (of --destination) again, attempts reset, in order."""
    from dicomnode.results.outbox import requeue_failed

    db = open_index(settings_from(config, data_dir))
    n = requeue_failed(db, destination)
    db.dispose()
    if json_out:
        print_json({"requeued": n, "destination": destination})
    else:
        console.print(f"{n} failed deliver{'y' if n == 1 else 'ies'} queued again")


def register(app: typer.Typer) -> None:
    """Add ``deliveries`` to the root app."""
    app.add_typer(deliveries_app, name="deliveries")
