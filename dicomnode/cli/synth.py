"""``dicomnode synth MODULE --out DIR``: synthetic DICOM studies a user can push with storescu."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import JsonOpt, console, fail, print_json


def synth_cmd(
    module_name: Annotated[str, typer.Argument(metavar="MODULE", help="Module")],
    out: Annotated[Path, typer.Option("--out", help="Output directory")],
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of cases")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write N synthetic cases of MODULE as DICOM files (with their ground truth)."""
    from dicomnode.cli.train import load_module

    module = load_module(module_name)
    try:
        paths = module.write_dicom(module.synthetic(n, seed), out)
    except NotImplementedError as exc:
        fail(str(exc))
    if json_out:
        print_json({"module": module.name, "n": n, "seed": seed,
                    "files": [str(p) for p in paths]})
        return
    console.print(f"wrote {len(paths)} DICOM files for {module.name} to {out}")
    # +sd +r: the modules write nested folders (one per study or case).
    console.print(f"push them: /usr/bin/storescu -aec DICOMNODE +sd +r +sp '*.dcm' HOST PORT {out}",
                  soft_wrap=True)  # one line, whatever the terminal width: it is copied


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_cmd)
