"""``dicomnode train MODULE``: train a new model version and register it (inactive)."""
from __future__ import annotations

import random
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import (
    EXIT_USAGE,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    fail,
    open_index,
    print_json,
    settings_from,
)

#: The validation set of a synthetic run is drawn from ``seed + VAL_SEED_OFFSET``:
#: a model trained on seed A is checked on data it never saw.
VAL_SEED_OFFSET = 10_000


def load_module(name: str) -> Any:
    """The installed module ``name``, or exit 2 naming the installed ones."""
    from ai.core.registry import UnknownModuleError, get_module

    try:
        return get_module(name)
    except UnknownModuleError as exc:
        fail(str(exc), EXIT_USAGE)


def split_samples(samples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded (train, validation) split of real samples."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(samples) * fraction)) if len(samples) > 1 else 0
    val = [samples[i] for i in order[:n_val]]
    return [samples[i] for i in order[n_val:]], val


def _command_line(module: str) -> str:
    """This command as a user would retype it (global flags such as ``-v`` left out)."""
    argv = sys.argv[1:]
    if "train" in argv:
        return "dicomnode " + shlex.join(argv[argv.index("train"):])
    return f"dicomnode train {module}"  # called as a function, not from the command line


def train_cmd(
    module_name: Annotated[str, typer.Argument(metavar="MODULE", help="Module to train")],
    synthetic: Annotated[int | None, typer.Option(
        "--synthetic", help="Train on N synthetic samples (default: the module's train_n)")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Train on the module's real data format at PATH")] = None,
    val_n: Annotated[int | None, typer.Option(
        "--val-n", help="Synthetic validation samples (default: the module's val_n)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, initialisation and order")] = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory to write the version to (default DATA_DIR/models/MODULE/VERSION)")
    ] = None,
    version: Annotated[str | None, typer.Option("--version", help="Version name")] = None,
    changelog: Annotated[str, typer.Option("--changelog", help="Changelog line")] = "",
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads")] = 2,
    timing_n: Annotated[int, typer.Option(
        "--timing-n", help="Cases for inference_s_per_case (0: skip)")] = 3,
    resume: Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="Resume a matching checkpoint")] = True,
    register_: Annotated[bool, typer.Option("--register/--no-register",
                                            help="Record the version in the index")] = True,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Train MODULE; the new version is registered but not active (see `models activate`)."""
    import torch

    from ai.core.models import new_version_name, resolve_device
    from train.loop import train

    if synthetic is not None and data is not None:
        fail("give --synthetic N or --data PATH, not both", EXIT_USAGE)
    module = load_module(module_name)
    try:
        resolve_device(device)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    torch.set_num_threads(max(1, threads))
    settings = settings_from(config, data_dir)
    defaults = module.default_config().get("training", {})
    overrides: dict[str, Any] = {"training": {}}
    if epochs is not None:
        overrides["training"]["epochs"] = epochs
    if data is not None:
        samples = list(module.load(data))
        if len(samples) < 2:
            fail(f"{data}: {len(samples)} samples; need at least 2")
        train_s, val_s = split_samples(samples, 0.15, seed)
        description = {"source": "real", "path": str(data.resolve()), "n_train": len(train_s),
                       "n_val": len(val_s), "split_seed": seed}
    else:
        n = synthetic if synthetic is not None else int(defaults.get("train_n", 1000))
        nv = val_n if val_n is not None else int(defaults.get("val_n", 200))
        console.print(f"generating {n} + {nv} synthetic {module.name} samples …")
        train_s = list(module.synthetic(n, seed))
        val_s = list(module.synthetic(nv, seed + VAL_SEED_OFFSET))
        overrides["training"]["train_n"] = n
        description = {"source": "synthetic", "generator": f"ai.{module.name}.synthetic",
                       "n_train": n, "train_seed": seed, "n_val": nv,
                       "val_seed": seed + VAL_SEED_OFFSET}
    name = version or new_version_name()
    target = out or (settings.data_dir / "models" / module.name / name)
    db = open_index(settings) if register_ else None
    result = train(
        module, train_s, val_s, out_dir=target.parent, version_dir=target, config=overrides,
        seed=seed, device=device, checkpoint_dir=settings.data_dir / "checkpoints" / module.name,
        resume=resume, version=name, data_description=description,
        command=_command_line(module.name), changelog=changelog, progress=not json_out,
        timing_n=timing_n, db=db,
    )
    if json_out:
        print_json({"module": module.name, "model_version": result.version,
                    "path": str(result.path), "sha256": result.sha256,
                    "metrics": result.metrics})
        return
    console.print(f"[bold]{module.name}[/bold] model {result.version} written to {result.path}")
    console.print(f"sha256 {result.sha256}")
    from dicomnode.cli.evaluate import print_metrics

    print_metrics(result.metrics)
    if register_:
        console.print(f"registered (inactive): dicomnode models activate {module.name} "
                      f"{result.version}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
