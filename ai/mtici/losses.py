"""CVFSNet's loss: label-smoothing cross-entropy + seesaw loss on every head.

``Loss/Loss.py:LabelSmoothSeasaw_MISO`` sums, over the non-empty outputs, w0·LS-CE
(ε = 0.4) + w1·Seesaw (p = 0.8, q = 1.0, eps = 1e-2, running class counts) with the
weights of ``config.py`` ``LOSS.Para.balance``: (0.8, 1.2) for the fused and both view
heads, (0.4, 0.6) for the stage-1 side heads, (0.1, 0.15) for the stage-3 side heads.
Seesaw and its counts are not in MONAI; this is Wang et al. (CVPR 2021) in a few lines.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: (label-smoothing CE weight, seesaw weight) per head, as the method's ``balance``.
HEAD_WEIGHTS: dict[str, tuple[float, float]] = {
    "fused": (0.8, 1.2),
    "frontal": (0.8, 1.2),
    "lateral": (0.8, 1.2),
    "frontal_side1": (0.4, 0.6),
    "lateral_side1": (0.4, 0.6),
    "frontal_side3": (0.1, 0.15),
    "lateral_side3": (0.1, 0.15),
}


class SeesawLoss(nn.Module):
    """Seesaw loss: mitigates negatives of rarer classes and compensates misclassified ones.

    Parameters
    ----------
    num_classes : int
    p : float
        Mitigation exponent on the ratio of cumulative class counts.
    q : float
        Compensation exponent on the score ratio.
    eps : float
        Floor of the true-class score in the compensation ratio.
    """

    counts: torch.Tensor

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 1.0, eps: float = 1e-2) -> None:
        super().__init__()
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("counts", torch.zeros(num_classes))

    def update(self, target: torch.Tensor) -> None:
        """Add one batch's labels to the running class counts (once per batch)."""
        self.counts += torch.bincount(target, minlength=self.counts.numel()).to(self.counts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean seesaw loss of (B, C) logits against (B,) class indices."""
        onehot = F.one_hot(target, logits.shape[1]).to(logits)
        weights = torch.ones_like(logits)
        if self.p > 0:
            counts = self.counts.clamp(min=1)
            ratio = counts[None, :] / counts[:, None]
            mitigation = torch.where(ratio < 1.0, ratio.pow(self.p), torch.ones_like(ratio))
            weights = weights * mitigation[target]
        if self.q > 0:
            scores = logits.detach().softmax(dim=1)
            self_score = scores.gather(1, target[:, None]).clamp(min=self.eps)
            ratio = scores / self_score
            weights = weights * torch.where(ratio > 1.0, ratio.pow(self.q), torch.ones_like(ratio))
        adjusted = logits + weights.log() * (1.0 - onehot)
        return F.cross_entropy(adjusted, target)


class MultiHeadLoss(nn.Module):
    """Σ over heads of w0·LS-CE + w1·Seesaw, weights from :data:`HEAD_WEIGHTS`."""

    def __init__(
        self,
        num_classes: int,
        smoothing: float = 0.4,
        p: float = 0.8,
        q: float = 1.0,
        weights: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.seesaw = SeesawLoss(num_classes, p=p, q=q)
        self.weights = dict(weights or HEAD_WEIGHTS)

    def forward(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Total loss; the seesaw counts advance once per call."""
        self.seesaw.update(target)
        total = torch.zeros((), device=target.device)
        for name, logits in outputs.items():
            w_ce, w_ss = self.weights[name]
            ce = F.cross_entropy(logits, target, label_smoothing=self.smoothing)
            total = total + w_ce * ce + w_ss * self.seesaw(logits, target)
        return total
