"""``dicomnode route check|explain``: the routing rules, and how they judged a study.

``route check`` validates the effective rules (or ``--rules FILE`` before it is
deployed), importing every routed module; an error exits 3 with the file, line
and reason.  ``route explain STUDY_UID`` prints each rule × series of a stored
study: matched (and the modules), or the conditions that failed.
"""
from __future__ import annotations

from pathlib import Path
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


@route_app.command("check")
def check_cmd(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
    rules_file: Annotated[Path | None, typer.Option(
        "--rules", help="Check this rules file instead of routing.rules_file")] = None,
) -> None:
    """Validate the routing rules and list them (exit 3 with file, line and reason on error)."""
    from rich.markup import escape

    from dicomnode.errors import ConfigError
    from dicomnode.jobs.modules import load_routing

    settings = settings_from(config, data_dir)
    if rules_file is not None:
        settings.routing.rules_file = rules_file
    try:
        rules = load_routing(settings, load_modules=True)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if json_out:
        print_json({"ok": True, "sources": list(rules.sources), "rules": [
            {"name": r.name, "level": r.level, "modules": list(r.modules),
             "missing_modules": list(r.missing_modules), "destinations": list(r.destinations),
             "source": r.source, "line": r.line, "description": r.description}
            for r in rules.rules]})
        return
    print_table(((escape(r.name), r.level, ", ".join(r.modules) or "-",
                  ", ".join(r.missing_modules), ", ".join(r.destinations) or "all",
                  f"{r.source}:{r.line}") for r in rules.rules),
                ["Rule", "Level", "Modules", "Not installed", "Destinations", "Defined at"],
                title=f"{len(rules.rules)} routing rule(s): OK")


def register(app: typer.Typer) -> None:
    """Add ``route`` to the root app."""
    app.add_typer(route_app, name="route")
