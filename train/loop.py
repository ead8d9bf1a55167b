"""The training loop shared by every module.

How a module plugs in
---------------------
A module implements :class:`ai.core.contract.AIModule`; for training it adds these
hooks (all in ``ai/core/contract.py``):

``default_config()``
    ``{"network": …, "preprocessing": …, "training": {"epochs", "batch_size", "lr",
    "weight_decay", "cache_rate", "train_n", "val_n"}}``.  The whole dict is stored
    in the model version and handed back to the hooks below.
``synthetic(n, seed)`` / ``load(path)``
    Samples (any type) with ground truth.
``transform(config, train=...)``
    Sample → dict of tensors: network input(s) and targets.  The default
    ``dataset()`` wraps it in a MONAI ``CacheDataset`` (``cache_rate`` 0 → plain
    ``Dataset``); override ``dataset()`` for random augmentation or lazy loading.
``network(config)``
    A ``torch.nn.Module`` from MONAI networks and blocks.
``forward(network, batch)``
    Default ``network(batch["image"])``; two-view modules override it.
``loss(outputs, batch, config)``
    Scalar loss.
``decode(outputs, config)`` / ``truth(sample)`` / ``metrics(predictions, truth)``
    Per-sample predictions, ground truth, and the paper's metrics (``modules.md`` keys).

:func:`train` then: seeds everything (``monai.utils.set_determinism``), builds the
datasets and MONAI ``DataLoader`` (shuffled with a per-epoch seeded generator so a
resumed run sees the same order), runs AdamW with a warm-up + cosine schedule and
gradient clipping, shows a rich progress bar, writes a resumable checkpoint after
every epoch (:mod:`train.checkpoint`), evaluates on a validation set with the
module's metrics (:mod:`train.evaluate`), saves a model version
(:func:`ai.core.models.save_model_version`) and, given a database, registers it
(not active) in the index.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import DataLoader
from monai.utils import set_determinism

from ai.core.contract import AIModule
from ai.core.models import LoadedModel, new_version_name, resolve_device, save_model_version
from train.checkpoint import code_digest, fingerprint, load_checkpoint, save_checkpoint

if TYPE_CHECKING:  # pragma: no cover - typing only
    from dicomnode.storage.db import Database

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` produced: the saved version and its validation metrics."""

    path: Path
    version: str
    sha256: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (dicts merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _lr_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def train(
    module: AIModule,
    train_samples: Sequence[Any],
    val_samples: Sequence[Any],
    *,
    out_dir: Path,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    version: str | None = None,
    data_description: Mapping[str, Any] | None = None,
    command: str = "",
    changelog: str = "",
    progress: bool = True,
    timing_n: int = 0,
    db: Database | None = None,
    version_dir: Path | None = None,
) -> TrainResult:
    """Train a new model version of ``module``.

    Parameters
    ----------
    module : AIModule
        The module (its hooks define data, network, loss and metrics).
    train_samples, val_samples : sequence
        Samples from :meth:`~AIModule.synthetic` or :meth:`~AIModule.load`.
    out_dir : Path
        Parent directory; the version is written to ``out_dir/<version>``.
    config : mapping, optional
        Overrides merged into :meth:`~AIModule.default_config`.
    seed : int
        Seeds Python, NumPy, torch and the shuffling (fixed: same seed, same model on
        the same device and library versions).
    device : str
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    checkpoint_dir : Path, optional
        Where ``last.pt`` is kept (default ``out_dir/.checkpoints/<module>``); a run
        with the same module, config, seed and data resumes from it.
    resume : bool
        Resume from a matching checkpoint (default True).
    version : str, optional
        Version name (default: UTC timestamp).
    data_description : mapping, optional
        Recorded as ``training_data`` in the metadata (source, n, seed …).
    command : str
        The command line, recorded in the metadata.
    timing_n : int
        If > 0, also measure ``inference_s_per_case`` on that many benchmark cases.
    db : Database, optional
        Register the new version (inactive) in this index.
    version_dir : Path, optional
        Write the version exactly here instead of ``out_dir/<version>`` (the bundled
        model lives in ``ai/<module>/model``).
    """
    cfg = merge_config(module.default_config(), config)
    tcfg = cfg.setdefault("training", {})
    epochs = int(tcfg.get("epochs", 10))
    batch_size = int(tcfg.get("batch_size", 16))
    dev = resolve_device(device)
    set_determinism(seed=seed)
    torch.manual_seed(seed)
    data_desc = dict(data_description or {})

    logger.info("building datasets: %d training, %d validation samples",
                len(train_samples), len(val_samples))
    train_ds = module.dataset(train_samples, cfg, train=True)
    logger.info("datasets ready; training %s for %d epochs on %s", module.name, epochs, dev)
    network = module.network(cfg).to(dev)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=float(tcfg.get("lr", 1e-3)),
        weight_decay=float(tcfg.get("weight_decay", 1e-4)),
    )
    steps_per_epoch = math.ceil(len(train_ds) / batch_size)  # type: ignore[arg-type]
    total = epochs * steps_per_epoch
    schedule = _lr_lambda(total, min(total // 10, 2 * steps_per_epoch) or 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ckpt_dir = checkpoint_dir or (out_dir / ".checkpoints" / module.name)
    fp = fingerprint(module.name, cfg, seed, {**data_desc, "code": code_digest(module)})
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if resume:
        restored = load_checkpoint(ckpt_dir, fingerprint=fp, network=network,
                                   optimizer=optimizer, scheduler=scheduler)
        if restored is not None:
            start_epoch, history = restored
            # The schedule follows this run's epoch count (a run may be extended).
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * schedule(scheduler.last_epoch)
            logger.info("resuming %s training after epoch %d (%s)", module.name, start_epoch,
                        ckpt_dir)
    clip = float(tcfg.get("grad_clip", 5.0))

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{module.name}", total=total, completed=start_epoch * steps_per_epoch,
                            loss=float("nan"))
        for epoch in range(start_epoch, epochs):
            network.train()
            # A per-epoch generator: a resumed run shuffles exactly as the first would have.
            gen = torch.Generator().manual_seed(seed * 1000 + epoch)
            loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=0,
                                generator=gen, drop_last=False)
            t0, running, count = time.monotonic(), 0.0, 0
            for batch in loader:
                batch = _to_device(batch, dev)
                optimizer.zero_grad(set_to_none=True)
                loss = module.loss(module.forward(network, batch), batch, cfg)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
                optimizer.step()
                scheduler.step()
                running += float(loss.detach())
                count += 1
                bar.update(task, advance=1, loss=running / count,
                           description=f"{module.name} epoch {epoch + 1}/{epochs}")
            history.append({"epoch": epoch + 1, "loss": running / max(count, 1),
                            "seconds": round(time.monotonic() - t0, 2)})
            logger.info("%s epoch %d/%d: loss %.4f (%.0f s)", module.name, epoch + 1, epochs,
                        history[-1]["loss"], history[-1]["seconds"])
            save_checkpoint(ckpt_dir, epoch=epoch + 1, fingerprint=fp, network=network,
                            optimizer=optimizer, scheduler=scheduler, history=history)

    network.eval()
    name = version or new_version_name()
    target = version_dir or (out_dir / name)
    loaded = LoadedModel(module=module.name, version=name, sha256="", network=network,
                         config=cfg, device=dev, path=target)
    from train.evaluate import evaluate

    metrics = evaluate(module, loaded, val_samples, timing_n=timing_n, seed=seed) if len(
        val_samples) else {}
    metrics["val_n"] = len(val_samples)
    path = save_model_version(
        target, module.name, network, cfg, version=name,
        changelog={name: changelog or f"trained {epochs} epochs, seed {seed}"},
        training_data={**data_desc, "seed": seed, "epochs": epochs, "history": history},
        metrics=metrics, command=command,
        description=f"{module.title}: model trained by dicomnode train",
    )
    from ai.core.models import read_metadata

    sha = str(read_metadata(path)["sha256"])
    if db is not None:
        from dicomnode.storage.registry import register_version

        register_version(db, path, source="trained")
    return TrainResult(path=path, version=name, sha256=sha, metrics=metrics, history=history,
                       resumed_from_epoch=start_epoch)
