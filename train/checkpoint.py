"""Resumable training checkpoints.

A checkpoint (``<dir>/last.pt``) holds the network, optimiser and scheduler state,
the epoch just finished and the RNG states, plus a fingerprint of the run (module,
config, seed, data description, and the module's source code).  :func:`load_checkpoint`
only resumes a run with the same fingerprint, so changing ``--epochs`` continues a run
while changing the data, the network or the module's code (its synthetic generator, say)
starts afresh.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


def code_digest(obj: Any) -> str:
    """sha256 of the Python sources of the package ``obj``'s class lives in.

    A checkpoint of a module whose generator or transforms have changed since must not
    be resumed: the run would go on with weights fitted to other data.
    """
    package = type(obj).__module__.rsplit(".", 1)[0]
    root = Path(importlib.import_module(package).__file__ or ".").parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(module: str, config: Mapping[str, Any], seed: int, data: Mapping[str, Any]) -> str:
    """Hash of what must match for a checkpoint to be resumed (epochs excluded)."""
    cfg = {k: v for k, v in config.items() if k != "training"}
    training = {k: v for k, v in dict(config.get("training", {})).items() if k != "epochs"}
    blob = json.dumps([module, cfg, training, seed, dict(data)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(
    directory: Path, *, epoch: int, fingerprint: str, network: torch.nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any | None, history: list[dict[str, Any]],
) -> Path:
    """Write ``last.pt`` atomically (temporary file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "fingerprint": fingerprint,
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    path = directory / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    directory: Path, *, fingerprint: str, network: torch.nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any | None,
) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore the state in ``directory`` if it belongs to this run.

    Returns
    -------
    (epoch, history) or None
        The last finished epoch (1-based) and the per-epoch history, or None when
        there is no checkpoint or it belongs to another run.
    """
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    # Our own file, written by save_checkpoint; it holds RNG tuples, not only tensors.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        logger.warning("checkpoint %s belongs to another run; starting afresh", path)
        return None
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return int(state["epoch"]), list(state.get("history", []))
