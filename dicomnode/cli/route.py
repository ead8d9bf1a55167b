"""``dicomnode route explain STUDY_UID``: which rule matched which series, and why not."""
from __future__ import annotations

from typing import Annotated

import typer

from dicomnode.cli.common import (
    EXIT_CONFIG,
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

route_app = typer.Typer(help="Routing rules.", no_args_is_help=True)


@route_app.command("explain")
def explain_cmd(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Evaluate the routing rules on a stored study: each rule × series, matched or the failed condition."""
    from rich.markup import escape

    from dicomnode.errors import ConfigError
    from dicomnode.jobs.modules import load_routing
    from dicomnode.routing.explain import explain_study

    settings = settings_from(config, data_dir)
    try:
        rules = load_routing(settings)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    db = open_index(settings)
    result = explain_study(db, study_uid, rules)
    if result is None:
        fail(f"no study {study_uid}")
    if json_out:
        print_json(result.as_json())
        return
    console.print(f"Study {result.study_instance_uid}  state {result.state}  generation "
                  f"{result.generation}  rules from {', '.join(rules.sources)}", highlight=False)
    print_table(((escape(a), escape(b), escape(c), escape(d)) for a, b, c, d in result.rows()),
                ["Rule", "Series", "Result", "Why"])


def register(app: typer.Typer) -> None:
    app.add_typer(route_app, name="route")
