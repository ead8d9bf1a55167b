"""``dicomnode``: the admin CLI's entry point.

Each sub-command lives in its own module under ``dicomnode/cli`` and exposes
``register(app)``, which adds its command(s) or sub-app to the root app.
"""
from __future__ import annotations

import importlib
import logging
import sys

import typer

app = typer.Typer(
    name="dicomnode",
    help="A DICOM node that runs AI modules on received studies and sends results to PACS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Sub-command modules, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "run",
    "echo",
    "send",
    "status",
    "studies",
    "config_cmd",
    "jobs", "deliveries", "route",
    "train", "evaluate", "models", "synth",
)


def _register_all() -> None:
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"dicomnode.cli.{name}")
        module.register(app)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv: debug)"),
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    from dicomnode.log import configure_logging

    configure_logging(level)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    _register_all()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="dicomnode")


if __name__ == "__main__":  # pragma: no cover
    main()
