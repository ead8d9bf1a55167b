"""``dicomnode evaluate MODULE``: the paper's metrics of a model version on held-out data."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import (
    EXIT_FAILED,
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

#: Default evaluation seed: never used by `dicomnode train` (0 and 10000 by default).
DEFAULT_SEED = 20261123


def print_metrics(metrics: dict[str, Any]) -> None:
    """Metrics as a table: per-label dicts become columns, scalars a row each."""
    tables = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if tables:
        labels = list(dict.fromkeys(label for t in tables.values() for label in t))
        print_table(([label, *(tables[k].get(label) for k in tables)] for label in labels),
                    ["label", *tables])
    for key, value in scalars.items():
        console.print(f"{key}: {value}")


def resolve_model_path(db: Any, module: str, model: str | None) -> Path:
    """A model version directory: a path given as ``--model``, a registered version, or the active one."""
    from dicomnode.storage.registry import RegistryError, ensure_bundled, resolve_version

    if model and Path(model).is_dir():
        return Path(model)
    ensure_bundled(db, [module])
    try:
        return Path(resolve_version(db, module, model).path)
    except RegistryError as exc:
        fail(str(exc))


def evaluate_cmd(
    module_name: Annotated[str, typer.Argument(metavar="MODULE", help="Module to evaluate")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Version (default: the active one) or a version directory")] = None,
    synthetic: Annotated[int | None, typer.Option(
        "--synthetic", help="Evaluate on N fresh synthetic samples (default 500)")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Evaluate on the module's real data format at PATH")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic set")] = DEFAULT_SEED,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto")] = "cpu",
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads")] = 2,
    timing_n: Annotated[int, typer.Option(
        "--timing-n", help="Cases timed through the node's path for inference_s_per_case")] = 3,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Evaluate a model version; --json prints {module, model_version, n, seed, metrics}."""
    import torch

    from ai.core.models import ModelError, load_model
    from dicomnode.cli.train import load_module
    from train.evaluate import evaluate

    if synthetic is not None and data is not None:
        fail("give --synthetic N or --data PATH, not both", 2)
    module = load_module(module_name)
    torch.set_num_threads(max(1, threads))
    settings = settings_from(config, data_dir)
    path = resolve_model_path(open_index(settings), module.name, model)
    try:
        loaded = load_model(path, module, device)
    except (ModelError, ValueError) as exc:
        fail(str(exc), EXIT_FAILED)
    if data is not None:
        samples = list(module.load(data))
    else:
        samples = list(module.synthetic(synthetic or 500, seed))
    metrics = evaluate(module, loaded, samples, timing_n=timing_n, seed=seed)
    report = {"module": module.name, "model_version": loaded.version, "n": len(samples),
              "seed": seed if data is None else None, "metrics": metrics}
    if json_out:
        print_json(report)
        return
    console.print(f"[bold]{module.name}[/bold] model {loaded.version} "
                  f"(sha256 {loaded.sha256[:12]}…) on {len(samples)} "
                  f"{'synthetic samples, seed ' + str(seed) if data is None else str(data)}")
    print_metrics(metrics)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
