"""``dicomnode config check|show``: validate the configuration before starting."""
from __future__ import annotations

import typer

from dicomnode.cli.common import ConfigOpt, DataDirOpt, JsonOpt, console, print_json, settings_from

config_app = typer.Typer(help="Configuration.", no_args_is_help=True)


@config_app.command("check")
def check(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the configuration (exit 3 with the bad key named if it is wrong)."""
    settings = settings_from(config, data_dir)
    if json_out:
        print_json({"ok": True, "settings": settings.model_dump(mode="json")})
    else:
        console.print(f"configuration OK: AE {settings.node.aetitle} port {settings.node.port}, "
                      f"index {settings.database_url}, spool {settings.spool_dir}, "
                      f"{len(settings.destinations)} destination(s)")


@config_app.command("show")
def show(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the effective settings (defaults, file and environment merged) as JSON."""
    print_json(settings_from(config, data_dir).model_dump(mode="json"))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
