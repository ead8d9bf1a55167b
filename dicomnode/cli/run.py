"""``dicomnode run``: the receiver, workers and scheduler in one process."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import (
    EXIT_CONFIG, EXIT_UNREACHABLE, ConfigOpt, DataDirOpt, fail, settings_from,
)


def run(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    aetitle: Annotated[str | None, typer.Option("--aetitle", "-aet", help="Our AE title")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="DICOM port")] = None,
    bind: Annotated[str | None, typer.Option("--bind", help="Address to listen on")] = None,
    role: Annotated[str, typer.Option("--role", help="receiver | worker | all")] = "all",
) -> None:
    """Run the node: receive studies, run AI modules, send results (Ctrl-C or SIGTERM stops)."""
    from dicomnode.app import Node
    from dicomnode.log import configure_logging

    settings = settings_from(config, data_dir, aetitle=aetitle, port=port, bind=bind)
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        configure_logging(logging.INFO)
    roles = ("receiver", "worker") if role == "all" else (role,)
    if not set(roles) <= {"receiver", "worker"}:
        fail(f"--role must be receiver, worker or all, not {role!r}", 2)
    from dicomnode.errors import ConfigError

    try:
        node = Node(settings, roles=roles)
    except ConfigError as exc:  # e.g. a routing rules file error: file, line and reason
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:
        fail(f"cannot start: {exc}", EXIT_UNREACHABLE)
    try:
        node.run_forever()
    except ConfigError as exc:  # found while starting, e.g. TLS without a CA
        fail(str(exc), EXIT_CONFIG)
    except OSError as exc:  # e.g. port in use
        fail(f"cannot listen on {settings.node.bind}:{settings.node.port}: {exc.strerror}", EXIT_UNREACHABLE)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
