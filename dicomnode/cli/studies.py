"""``dicomnode studies list|show``: what the node holds."""
from __future__ import annotations

from typing import Annotated

import typer

from dicomnode.cli.common import (
    ConfigOpt, DataDirOpt, JsonOpt, console, fail, open_index, print_json, print_table,
    settings_from,
)

studies_app = typer.Typer(help="Received studies.", no_args_is_help=True)


@studies_app.command("list")
def list_cmd(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", help="Most recent N")] = 100,
) -> None:
    """List studies, most recently received first."""
    from dicomnode.storage.index import list_studies

    db = open_index(settings_from(config, data_dir))
    with db.session() as session:
        rows = list_studies(session, limit)
    if json_out:
        print_json([r.as_json() for r in rows])
        return
    print_table(
        ((r.study_instance_uid, r.study_date, "/".join(r.modalities), r.series, r.instances,
          f"{r.bytes / 1e6:.1f}", r.state, r.last_received_at.strftime("%Y-%m-%d %H:%M:%S"))
         for r in rows),
        ["Study Instance UID", "Date", "Modality", "Series", "Instances", "MB", "State", "Last received (UTC)"],
        title=f"{len(rows)} studies",
    )


@studies_app.command("show")
def show_cmd(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show one study: its series, counts and state."""
    from dicomnode.storage.index import study_detail

    db = open_index(settings_from(config, data_dir))
    with db.session() as session:
        detail = study_detail(session, study_uid)
    if detail is None:
        fail(f"no study {study_uid}")
    if json_out:
        print_json(detail)
        return
    console.print(f"Study {detail['study_instance_uid']}  date {detail['study_date']}  "
                  f"state {detail['state']}  description {detail['study_description']!r}")
    print_table(
        ((s["series_number"], s["modality"], s["series_description"], s["instance_count"],
          f"{s['bytes'] / 1e6:.1f}", s["state"], "result" if s["is_result"] else s["calling_ae"],
          s["series_instance_uid"]) for s in detail["series"]),
        ["#", "Modality", "Description", "Instances", "MB", "State", "From", "Series Instance UID"],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(studies_app, name="studies")
