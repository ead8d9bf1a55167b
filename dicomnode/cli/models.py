"""``dicomnode models list|show|activate|rollback|import``: the model registry."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import (
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

models_app = typer.Typer(help="Model versions of the AI modules.", no_args_is_help=True)


def _row_json(row: Any) -> dict[str, Any]:
    return {"module": row.module, "version": row.version, "active": row.is_active,
            "source": row.source, "sha256": row.sha256, "path": row.path,
            "created_at": row.created_at, "activated_at": row.activated_at,
            "metrics": row.metrics, "description": row.description}


def _auc_summary(metrics: dict[str, Any]) -> str:
    auc = metrics.get("auc")
    if isinstance(auc, dict):
        values = [v for v in auc.values() if isinstance(v, int | float)]
        return f"min AUC {min(values):.3f}" if values else ""
    keys = [k for k in metrics if not isinstance(metrics[k], dict)][:2]
    return ", ".join(f"{k} {metrics[k]}" for k in keys)


def _db(config: Path | None, data_dir: Path | None) -> Any:
    from dicomnode.storage.registry import ensure_bundled

    db = open_index(settings_from(config, data_dir))
    ensure_bundled(db)  # a fresh install lists (and runs) the bundled models
    return db


@models_app.command("list")
def list_cmd(
    module: Annotated[str | None, typer.Argument(help="Only this module")] = None,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """List registered versions; the active one of each module is marked."""
    from dicomnode.storage.registry import list_versions

    rows = list_versions(_db(config, data_dir), module)
    if json_out:
        print_json([_row_json(r) for r in rows])
        return
    print_table(((r.module, r.version, "*" if r.is_active else "", r.source, r.sha256[:12],
                  _auc_summary(r.metrics or {}), r.created_at.strftime("%Y-%m-%d %H:%M"))
                 for r in rows),
                ["Module", "Version", "Active", "Source", "sha256", "Metrics", "Registered (UTC)"],
                title=f"{len(rows)} model versions")


@models_app.command("show")
def show_cmd(
    module: Annotated[str, typer.Argument(help="Module")],
    version: Annotated[str | None, typer.Argument(help="Version (default: active)")] = None,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show one version: registry row and its metadata.json."""
    from ai.core.models import ModelError, read_metadata
    from dicomnode.storage.registry import RegistryError, resolve_version

    try:
        row = resolve_version(_db(config, data_dir), module, version)
    except RegistryError as exc:
        fail(str(exc))
    try:
        meta = read_metadata(Path(row.path))
    except ModelError as exc:
        meta = {"error": str(exc)}
    if json_out:
        print_json({**_row_json(row), "metadata": meta})
        return
    console.print(f"[bold]{row.module} {row.version}[/bold]"
                  f"{'  (active)' if row.is_active else ''}  source {row.source}")
    console.print(f"sha256  {row.sha256}\npath    {row.path}")
    console.print(f"command {meta.get('command', '')}")
    console.print("training data " + json.dumps(row.description.get("training_data", {})))
    from dicomnode.cli.evaluate import print_metrics

    print_metrics(dict(row.metrics or {}))


@models_app.command("activate")
def activate_cmd(
    module: Annotated[str, typer.Argument(help="Module")],
    version: Annotated[str, typer.Argument(help="Version to make active")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Make VERSION the active model of MODULE (new jobs use it)."""
    from dicomnode.storage.registry import RegistryError, activate

    try:
        row = activate(_db(config, data_dir), module, version)
    except RegistryError as exc:
        fail(str(exc))
    if json_out:
        print_json(_row_json(row))
    else:
        console.print(f"{module}: {version} is active (sha256 {row.sha256[:12]}…)")


@models_app.command("rollback")
def rollback_cmd(
    module: Annotated[str, typer.Argument(help="Module")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Re-activate the version that was active before the current one."""
    from dicomnode.storage.registry import RegistryError, rollback

    try:
        row = rollback(_db(config, data_dir), module)
    except RegistryError as exc:
        fail(str(exc))
    if json_out:
        print_json(_row_json(row))
    else:
        console.print(f"{module}: rolled back to {row.version} (sha256 {row.sha256[:12]}…)")


@models_app.command("import")
def import_cmd(
    path: Annotated[Path, typer.Argument(help="A model version directory")],
    activate_: Annotated[bool, typer.Option("--activate", help="Also activate it")] = False,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, json_out: JsonOpt = False,
) -> None:
    """Copy a model version into the data directory and register it."""
    from ai.core.models import ModelError
    from dicomnode.storage.registry import RegistryError, import_version

    settings = settings_from(config, data_dir)
    try:
        row = import_version(_db(config, data_dir), path, settings.data_dir / "models",
                             activate=activate_)
    except (ModelError, RegistryError) as exc:
        fail(str(exc))
    if json_out:
        print_json(_row_json(row))
    else:
        console.print(f"imported {row.module} {row.version} to {row.path}"
                      f"{' (active)' if row.is_active else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
