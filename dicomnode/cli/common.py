"""What every sub-command shares: options, settings, the index, tables and JSON output.

Exit codes (meaningful for scripts):

=====  ==========================================================
0      success
1      the operation failed (peer refused, job failed, not found …)
2      usage error (bad flags; Typer's own code)
3      configuration error (the message names the bad key)
4      a peer or the database could not be reached
=====  ==========================================================
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dicomnode.config import Settings, load_settings
from dicomnode.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNREACHABLE = 4

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="dicomnode.toml (default: $DICOMNODE_CONFIG, /etc/dicomnode)"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (spool, index, models)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` to stderr and exit with ``code``."""
    # Messages quote TOML ("[[rules]]"): escape them so rich does not read them as markup.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def settings_from(
    config: Path | None, data_dir: Path | None, **node_overrides: Any
) -> Settings:
    """Load settings, applying ``--data-dir`` and other ``[node]`` flags; exit 3 on bad config."""
    overrides = {"node": {"data_dir": data_dir, **node_overrides}}
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def open_index(settings: Settings) -> Any:
    """Open (and migrate) the node's index; exit 4 if the database cannot be reached."""
    from sqlalchemy.exc import OperationalError

    from dicomnode.storage.db import open_database

    try:
        return open_database(settings.database_url, fsync=settings.node.fsync)
    except OperationalError as exc:
        fail(f"cannot open the index at {settings.database_url}: {exc.orig}", EXIT_UNREACHABLE)


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (datetimes and paths as strings)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_table(
    rows: Iterable[Sequence[Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """A rich table for people."""
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
