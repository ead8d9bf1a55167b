"""``dicomnode config check|show``: validate the configuration before starting."""
from __future__ import annotations

import typer

from dicomnode.cli.common import (
    EXIT_CONFIG, ConfigOpt, DataDirOpt, JsonOpt, console, fail, print_json, settings_from,
)

config_app = typer.Typer(help="Configuration.", no_args_is_help=True)


@config_app.command("check")
def check(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the configuration and the routing rules (exit 3 naming the bad key or line)."""
    from dicomnode.errors import ConfigError
    from dicomnode.jobs.modules import load_routing

    settings = settings_from(config, data_dir)
    try:  # the routing rules are configuration too: file, line and reason
        rules = load_routing(settings, load_modules=True)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if json_out:
        print_json({"ok": True, "settings": settings.model_dump(mode="json"),
                    "rules": [r.name for r in rules.rules]})
    else:
        console.print(f"configuration OK: AE {settings.node.aetitle} port {settings.node.port}, "
                      f"index {settings.database_url}, spool {settings.spool_dir}, "
                      f"{len(settings.destinations)} destination(s), {len(rules.rules)} routing "
                      f"rule(s) from {', '.join(rules.sources)}")


@config_app.command("show")
def show(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the effective settings (defaults, file and environment merged) as JSON."""
    print_json(settings_from(config, data_dir).model_dump(mode="json"))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
