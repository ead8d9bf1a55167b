"""Training and evaluation of the mtici network (the method's recipe, sized for a CPU).

CVFSNet trains 300 epochs with AdamW (lr 3e-4, wd 0.01), 20 warm-up epochs and cosine
restarts, class-balanced sampling, and keeps the best checkpoint.  Synthetic data are
balanced by construction and plentiful, so here: AdamW, linear warm-up then cosine
decay over the run, a fixed seed, and the same multi-head loss.  Clips are prepared
once (float16 in memory: 2 × 8 × 64 × 64 per case) and batches drawn from them.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ai.mtici.datasets import MticiSample, sample_clips
from ai.mtici.losses import MultiHeadLoss
from ai.mtici.network import CVFSNet, NetworkConfig, build_network
from ai.mtici.synthetic import SyntheticCase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule (stored with each model version)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 2
    seed: int = 0
    label_smoothing: float = 0.4
    seesaw_p: float = 0.8
    seesaw_q: float = 1.0


def prepare(
    samples: Sequence[MticiSample | SyntheticCase], clip: Sequence[int], mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked (N, 1, T, H, W) float16 clips of both views and (N,) labels."""
    frontal, lateral, labels = [], [], []
    for sample in samples:
        if isinstance(sample, SyntheticCase):
            sample = MticiSample(sample.case_id, sample.grade, sample.frontal, sample.lateral)
        f, s = sample_clips(sample, clip)
        frontal.append(torch.from_numpy(f).half())
        lateral.append(torch.from_numpy(s).half())
        labels.append(sample.label(mode))
    return torch.stack(frontal), torch.stack(lateral), torch.tensor(labels, dtype=torch.long)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def fit(
    network_config: NetworkConfig,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: TrainConfig,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
    network: CVFSNet | None = None,
) -> CVFSNet:
    """Train (or continue training) a network on prepared clips.

    Parameters
    ----------
    data : (frontal, lateral, labels)
        From :func:`prepare`.
    progress : callable, optional
        Called after every epoch with (epoch, epochs, mean loss).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    net = network or build_network(network_config)
    net.to(device).train()
    loss_fn = MultiHeadLoss(
        network_config.num_classes, config.label_smoothing, config.seesaw_p, config.seesaw_q
    ).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    frontal, lateral, labels = data
    n = len(labels)
    steps_per_epoch = max(n // config.batch_size, 1)
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        running, t0 = 0.0, time.perf_counter()
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            for group in optimiser.param_groups:
                group["lr"] = config.lr * _schedule(step, total, warmup)
            outputs = net(frontal[idx].float().to(device), lateral[idx].float().to(device))
            loss = loss_fn(outputs, labels[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += float(loss.detach())
            step += 1
        mean_loss = running / steps_per_epoch
        logger.info("epoch %d/%d loss %.4f (%.1f s)", epoch + 1, config.epochs, mean_loss, time.perf_counter() - t0)
        if progress is not None:
            progress(epoch + 1, config.epochs, mean_loss)
    return net.eval()


@torch.inference_mode()
def predict_probabilities(
    net: CVFSNet, frontal: torch.Tensor, lateral: torch.Tensor, batch_size: int = 32, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Softmax probabilities of the fused and both view heads, (N, classes) each."""
    net.eval().to(device)
    out: dict[str, list[np.ndarray]] = {"fused": [], "frontal": [], "lateral": []}
    for i in range(0, len(frontal), batch_size):
        logits = net(frontal[i : i + batch_size].float().to(device), lateral[i : i + batch_size].float().to(device))
        for key in out:
            out[key].append(logits[key].softmax(dim=1).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
