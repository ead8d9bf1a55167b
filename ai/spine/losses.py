"""CCF-Net's loss (``CCFLoss``, methods-notes §3.2) plus the disc-grade extension.

- heatmaps: MSE over the channels whose landmark lies on the grid (``mask``);
- offsets: smooth-L1 on the y and x offsets where the target heat is within
  ``offset_band`` (0.6) of its peak (the cells next to the landmark);
- class: class-balanced BCE (effective number of samples, β = (n − 1) / n per class)
  on the class logit at the ground-truth peak cell, vertebra and disc separately;
- grade (extension): class-balanced cross-entropy over disc morphology v1…v4 and
  class-balanced BCE on the v5 flag, at the same cells.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ai.spine.labels import N_VERTEBRAE
from ai.spine.network import CLS, GRADE, HEAT, OFF_X, OFF_Y, SCHMORL

DEFAULT_LOSS: dict[str, Any] = {
    "heat_weight": 1.0, "offset_weight": 1.0, "class_weight": 0.2, "grade_weight": 0.3,
    "offset_band": 0.6, "sigma_cells": 1.0,
    # Expected class counts of the synthetic generator per 1000 studies (its prevalences):
    # vertebra v1/v2, disc normal/abnormal, disc morphology v1..v4, v5 no/yes.
    "class_counts": {"vertebra": [3150, 1850], "disc": [3270, 2730],
                     "grade": [3270, 1230, 1040, 460], "schmorl": [5400, 600]},
}


def effective_number(n: float) -> float:
    """E(n) = (1 − βⁿ) / (1 − β) with β = (n − 1) / n (Cui et al.; CCF-Net's choice of β)."""
    n = max(float(n), 1.0)
    beta = (n - 1.0) / n
    return (1.0 - beta**n) / (1.0 - beta) if beta < 1.0 else n


def class_balanced_pos_weight(counts: Sequence[float]) -> float:
    """BCE ``pos_weight`` from (negatives, positives): w₁ / w₀ with w = 1 / E(n)
    (CCF-Net's ``CBBCEWithLogitsLoss``)."""
    w0, w1 = (1.0 / (effective_number(n) + 1e-5) for n in counts[:2])
    return w1 / (w0 + 1e-5)


def class_balanced_weights(counts: Sequence[float]) -> list[float]:
    """Per-class weights 1 / E(n), normalised to mean 1 (for a weighted cross-entropy)."""
    w = [1.0 / effective_number(n) for n in counts]
    mean = sum(w) / len(w)
    return [x / mean for x in w]


def _at_peaks(maps: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """Values of (B, C, g, g) ``maps`` at the arg-max cell of each (B, C) target heatmap."""
    b, c = heat.shape[:2]
    idx = heat.reshape(b, c, -1).argmax(dim=-1, keepdim=True)
    return maps.reshape(b, c, -1).gather(-1, idx).squeeze(-1)


def ccf_loss(maps: torch.Tensor, batch: Mapping[str, torch.Tensor],
             config: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one batch and its parts (for logging)."""
    cfg = {**DEFAULT_LOSS, **dict(config.get("loss", {}))}
    heat_t = batch["heat"].to(maps.dtype)
    mask = batch["mask"].to(maps.dtype)  # (B, 11)
    m = mask[:, :, None, None]
    cells = heat_t.shape[-1] * heat_t.shape[-2]
    heat_loss = (((maps[:, HEAT] - heat_t) ** 2) * m).sum() / (m.sum() * cells).clamp(min=1.0)
    band = ((heat_t >= 1.0 - float(cfg["offset_band"])) & (m > 0)).to(maps.dtype)
    n_band = band.sum().clamp(min=1.0)
    off_loss = maps.new_zeros(())
    for ch, key in ((OFF_Y, "off_y"), (OFF_X, "off_x")):
        err = F.smooth_l1_loss(maps[:, ch], batch[key].to(maps.dtype), reduction="none")
        off_loss = off_loss + (err * band).sum() / n_band
    logits = _at_peaks(maps[:, CLS], heat_t)  # (B, 11)
    labels = batch["label"]
    valid = (labels >= 0) & (mask > 0)
    counts = cfg["class_counts"]
    cls_loss = maps.new_zeros(())
    for name, sl in (("vertebra", slice(0, N_VERTEBRAE)), ("disc", slice(N_VERTEBRAE, None))):
        v = valid[:, sl]
        if v.any():
            pw = torch.tensor(class_balanced_pos_weight(counts[name]), dtype=maps.dtype,
                              device=maps.device)
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(
                logits[:, sl][v], labels[:, sl][v].to(maps.dtype), pos_weight=pw)
    disc_heat = heat_t[:, N_VERTEBRAE:]
    disc_mask = mask[:, N_VERTEBRAE:] > 0
    grade_logits = torch.stack([_at_peaks(maps[:, GRADE][:, k:k + 1].expand(-1, 6, -1, -1),
                                          disc_heat) for k in range(4)], dim=-1)  # (B, 6, 4)
    grades = batch["grade"]
    gv = (grades >= 0) & disc_mask
    grade_loss = maps.new_zeros(())
    if gv.any():
        # Extrusions are rare (v4 ≈ 8 % of discs): balance the grades as CCF-Net balances
        # its binary classes, or the head never names one.
        weight = torch.tensor(class_balanced_weights(counts.get("grade", [1, 1, 1, 1])),
                              dtype=maps.dtype, device=maps.device)
        grade_loss = F.cross_entropy(grade_logits[gv], grades[gv], weight=weight)
    v5_logits = _at_peaks(maps[:, SCHMORL:SCHMORL + 1].expand(-1, 6, -1, -1), disc_heat)
    if disc_mask.any():
        pw = torch.tensor(class_balanced_pos_weight(counts["schmorl"]), dtype=maps.dtype,
                          device=maps.device)
        grade_loss = grade_loss + F.binary_cross_entropy_with_logits(
            v5_logits[disc_mask], batch["schmorl"][disc_mask].to(maps.dtype), pos_weight=pw)
    total = (float(cfg["heat_weight"]) * heat_loss + float(cfg["offset_weight"]) * off_loss
             + float(cfg["class_weight"]) * cls_loss + float(cfg["grade_weight"]) * grade_loss)
    parts = {"heat": float(heat_loss.detach()), "offset": float(off_loss.detach()),
             "class": float(cls_loss.detach()), "grade": float(grade_loss.detach())}
    return total, parts
