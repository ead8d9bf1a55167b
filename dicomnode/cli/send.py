"""``dicomnode send``: C-STORE files or folders to a peer, with a progress bar."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicomnode.cli.common import (
    EXIT_FAILED, EXIT_UNREACHABLE, ConfigOpt, DataDirOpt, JsonOpt, console, fail, print_json,
    settings_from,
)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            fail(f"{path} does not exist")
    return out


def send(
    target: Annotated[str, typer.Argument(help="Destination name from the config, or HOST")],
    paths: Annotated[list[Path], typer.Argument(help="[PORT] then files or folders")],
    aetitle: Annotated[str, typer.Option("--aetitle", "-aet", help="Calling AE title")] = "",
    called: Annotated[str, typer.Option("--call", "-aec", help="Called AE title")] = "ANY-SCP",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send DICOM files (folders recursively) by C-STORE; non-DICOM files are skipped."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pynetdicom import AE, _config

    settings = settings_from(config, data_dir)
    dest = next((d for d in settings.destinations if d.name == target), None)
    if dest is not None:
        host, port, called = dest.host, dest.port, dest.aetitle
    else:
        if not paths or not str(paths[0]).isdigit():
            fail(f"no destination named {target!r}: give HOST PORT FILES…")
        host, port, paths = target, int(str(paths[0])), paths[1:]
    files = _files(paths)
    headers = []
    skipped = 0
    for path in files:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            headers.append((path, str(meta.file_meta.MediaStorageSOPClassUID),
                            str(meta.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            skipped += 1
    pairs = sorted({(sop, ts) for _, sop, ts in headers})
    if len(pairs) > 128:
        fail("more than 128 SOP class/transfer syntax pairs in one send; split the folder")
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream files, never load a whole run
    ae = AE(ae_title=aetitle or settings.node.aetitle)
    for sop, ts in pairs:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        fail(f"association with {called}@{host}:{port} failed", EXIT_UNREACHABLE)
    sent = failed = 0
    failures = []
    with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=json_out) as progress:
        task = progress.add_task("send", total=len(headers))
        for path, _sop, _ts in headers:
            rsp = assoc.send_c_store(path)
            code = int(rsp.Status) if rsp and "Status" in rsp else None
            if code is not None and (code == 0 or code >> 12 == 0xB):
                sent += 1
            else:
                failed += 1
                failures.append({"file": str(path), "status": code})
            progress.advance(task)
    assoc.release()
    if json_out:
        print_json({"sent": sent, "failed": failed, "skipped": skipped, "failures": failures})
    else:
        console.print(f"{sent} sent, {failed} failed, {skipped} skipped (not DICOM)")
        for item in failures[:20]:
            status = "no response" if item["status"] is None else f"0x{item['status']:04X}"
            console.print(f"  {item['file']}: {status}")
    if failed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("send")(send)
