"""``dicomnode echo``: C-ECHO a peer (a configured destination or host/port)."""
from __future__ import annotations

import time
from typing import Annotated

import typer

from dicomnode.cli.common import (
    EXIT_FAILED, EXIT_UNREACHABLE, ConfigOpt, DataDirOpt, JsonOpt, console, fail, print_json,
    settings_from,
)


def echo(
    target: Annotated[str, typer.Argument(help="Destination name from the config, or HOST")],
    port: Annotated[int | None, typer.Argument(help="Port (when TARGET is a host)")] = None,
    aetitle: Annotated[str, typer.Option("--aetitle", "-aet", help="Calling AE title")] = "",
    called: Annotated[str, typer.Option("--call", "-aec", help="Called AE title")] = "ANY-SCP",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send a C-ECHO and report the status and round-trip time."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    settings = settings_from(config, data_dir)
    if port is None:
        dest = next((d for d in settings.destinations if d.name == target), None)
        if dest is None:
            fail(f"no destination named {target!r} (give HOST PORT or configure [[destinations]])")
        host, port, called = dest.host, dest.port, dest.aetitle
    else:
        host = target
    ae = AE(ae_title=aetitle or settings.node.aetitle)
    ae.add_requested_context(Verification)
    start = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        fail(f"association with {called}@{host}:{port} failed", EXIT_UNREACHABLE)
    rsp = assoc.send_c_echo()
    assoc.release()
    ms = (time.perf_counter() - start) * 1000
    code = int(rsp.Status) if rsp and "Status" in rsp else None
    if json_out:
        print_json({"host": host, "port": port, "called_ae": called, "status": code, "ms": round(ms, 1)})
    else:
        console.print(f"C-ECHO {called}@{host}:{port}: status 0x{code or 0:04X} in {ms:.1f} ms"
                      if code is not None else f"C-ECHO {called}@{host}:{port}: no response")
    if code != 0:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("echo")(echo)
