"""CVFSNet on MONAI blocks: two video branches, cross-view fusion, deep supervision.

The method (``Src/CVFSNet.py``) runs two X3D-M branches that keep the time axis, fuses
their stage-4 maps with the Cross View Fusion Module (CVFM) and supervises the fused
head, both view heads and side heads on stages 1 and 3.  MONAI has no X3D, so each
branch is an X3D-lite: a (1,2,2)-strided stem and four (1,2,2)-strided
``ResidualUnit`` stages with squeeze-excitation and Swish, which keep T like X3D.

CVFM here, with one deliberate change:

* pseudo-oblique term  ``A = cos θ · C + sin θ · S`` with θ = (π/2)·sigmoid(α), α
  learned (init 0 → 45°).  The method writes ``0.5·(C/k + S/(1−k))`` with
  k = cos(π·sigmoid(α)) + 1e-8, which at its own initialisation (α = 0) divides C by
  1e-8; the projection form is the same learned-angle oblique view without the pole.
* Pythagorean term ``P = sqrt(C² + S²)``; ``F = A + sigmoid(γ)·P`` (γ init 0).
* two query streams from F attend to the frontal and to the lateral tokens
  (``monai.networks.blocks.CrossAttentionBlock`` + ``MLPBlock``, pre-norm residuals,
  learned position embedding), summed with a skip of F, then BatchNorm and the fused
  head.

Heads use the method's MARC calibration (logit' = a·logit + b·‖W_c‖).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from monai.networks.blocks import (
    ChannelSELayer,
    Convolution,
    CrossAttentionBlock,
    MLPBlock,
    ResidualUnit,
)
from torch import nn

#: Output names in the order of the method's output list (fused, cor, sag, side 1, side 3).
HEADS = ("fused", "frontal", "lateral", "frontal_side1", "lateral_side1", "frontal_side3", "lateral_side3")


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters of :class:`CVFSNet` (stored in each model version).

    Parameters
    ----------
    num_classes : int
        4 (0/1, 2a, 2b, 3), 5, or 2 (binary ≥ 2b).
    clip : (int, int, int)
        T, H, W the runs are resampled to.
    channels : (int, ...)
        Stem then stage widths; 5 entries.
    head_dim : int
        Width of each head's projected pool.
    expand : int
        Fusion tokens are ``channels[-1] * expand`` wide.
    num_heads : int
        Attention heads in the fusion module.
    dropout : float
        Dropout before the head classifiers (the method uses 0.5).
    """

    num_classes: int = 4
    clip: tuple[int, int, int] = (8, 64, 64)
    channels: tuple[int, ...] = (8, 16, 24, 32, 48)
    subunits: int = 1
    head_dim: int = 64
    expand: int = 2
    num_heads: int = 4
    dropout: float = 0.3
    side_heads: tuple[int, ...] = field(default=(1, 3))

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> NetworkConfig:
        """Build from a JSON-like mapping (lists become tuples); unknown keys raise."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"network config: unknown keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class MARCLinear(nn.Module):
    """Linear classifier with margin calibration (MARC, Wang et al. 2022) as CVFSNet uses."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.a = nn.Parameter(torch.ones(num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) → (B, classes)."""
        w_norm = self.fc.weight.norm(dim=1)
        return self.a * self.fc(x) + self.b * w_norm


class ProjectedPoolHead(nn.Module):
    """1×1×1 conv + BN + act, global average pool, linear + act, dropout, MARC classifier."""

    def __init__(self, in_channels: int, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pre = Convolution(3, in_channels, dim, kernel_size=1, act="SWISH", norm="BATCH")
        self.post = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Dropout(dropout))
        self.classifier = MARCLinear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → logits."""
        return self.classifier(self.post(self.pre(x).mean(dim=(2, 3, 4))))


class VideoBranch(nn.Module):
    """X3D-lite from MONAI blocks: every stride is (1, 2, 2), so T is kept throughout."""

    def __init__(self, channels: tuple[int, ...], subunits: int = 1) -> None:
        super().__init__()
        self.stem = Convolution(
            3, 1, channels[0], strides=(1, 2, 2), kernel_size=(3, 5, 5), act="SWISH", norm="BATCH"
        )
        self.stages = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            self.stages.append(
                nn.Sequential(
                    ResidualUnit(
                        3, c_in, c_out, strides=(1, 2, 2), kernel_size=3, subunits=subunits,
                        act="SWISH", norm="BATCH",
                    ),
                    ChannelSELayer(3, c_out, r=4, acti_type_2="sigmoid"),
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, T, H, W) → the four stage outputs."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class CrossViewFusion(nn.Module):
    """CVFM: pseudo-oblique + Pythagorean terms, then cross-attention to each view."""

    def __init__(self, channels: int, tokens: int, expand: int, num_heads: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.alpha = nn.Parameter(torch.zeros(()))
        self.gamma = nn.Parameter(torch.zeros(()))
        self.embed_f = nn.Linear(channels, hidden)
        self.embed_c = nn.Linear(channels, hidden)
        self.embed_s = nn.Linear(channels, hidden)
        self.position = nn.Parameter(torch.zeros(1, tokens, hidden))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.streams = nn.ModuleList()
        for _ in range(2):  # frontal-context and lateral-context query streams
            self.streams.append(
                nn.ModuleDict(
                    {
                        "norm_q": nn.LayerNorm(hidden),
                        "norm_kv": nn.LayerNorm(hidden),
                        "attn": CrossAttentionBlock(hidden_size=hidden, num_heads=num_heads),
                        "norm_mlp": nn.LayerNorm(hidden),
                        "mlp": MLPBlock(hidden_size=hidden, mlp_dim=4 * hidden, act="GELU"),
                    }
                )
            )
        self.norm = nn.BatchNorm3d(hidden)
        self.hidden = hidden

    def angle_degrees(self) -> float:
        """The learned pseudo-oblique angle (0° = frontal, 90° = lateral)."""
        return float(torch.sigmoid(self.alpha.detach())) * 90.0

    def forward(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Stage-4 maps (B, C, T, H, W) of both views → fused map (B, hidden, T, H, W)."""
        theta = 0.5 * math.pi * torch.sigmoid(self.alpha)
        oblique = torch.cos(theta) * c + torch.sin(theta) * s
        # eps keeps the gradient of sqrt finite where both maps are 0 (after ReLU/SiLU).
        pythagorean = torch.sqrt(c * c + s * s + 1e-6)
        fused = oblique + torch.sigmoid(self.gamma) * pythagorean
        b, ch, t, h, w = fused.shape

        def tokens(x: torch.Tensor, embed: nn.Module) -> torch.Tensor:
            return embed(x.flatten(2).transpose(1, 2)) + self.position

        q0 = tokens(fused, self.embed_f)
        out = q0
        for module, ctx in zip(self.streams, (tokens(c, self.embed_c), tokens(s, self.embed_s)), strict=True):
            stream = cast(nn.ModuleDict, module)
            q = q0 + stream["attn"](stream["norm_q"](q0), context=stream["norm_kv"](ctx))
            q = q + stream["mlp"](stream["norm_mlp"](q))
            out = out + q
        return self.norm(out.transpose(1, 2).reshape(b, self.hidden, t, h, w))


class CVFSNet(nn.Module):
    """Dual-view mTICI network; ``forward(frontal, lateral)`` returns logits per head.

    Inputs are (B, 1, T, H, W) z-scored clips.  The returned dict has the keys of
    :data:`HEADS` (side heads only when configured); ``"fused"`` is the prediction.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        if len(ch) != 5:
            raise ValueError("network config: channels needs 5 entries (stem + 4 stages)")
        self.frontal = VideoBranch(ch, config.subunits)
        self.lateral = VideoBranch(ch, config.subunits)
        t, h, w = config.clip
        for _ in range(len(ch)):  # stem + 4 stages, each (1, 2, 2) with "same" padding
            h, w = (h + 1) // 2, (w + 1) // 2
        tokens = t * h * w
        self.fusion = CrossViewFusion(ch[-1], tokens, config.expand, config.num_heads)
        n, d, p = config.num_classes, config.head_dim, config.dropout
        self.heads = nn.ModuleDict(
            {
                "fused": ProjectedPoolHead(ch[-1] * config.expand, d, n, p),
                "frontal": ProjectedPoolHead(ch[-1], d, n, p),
                "lateral": ProjectedPoolHead(ch[-1], d, n, p),
            }
        )
        for stage in config.side_heads:
            for view in ("frontal", "lateral"):
                self.heads[f"{view}_side{stage}"] = nn.Sequential(
                    Convolution(3, ch[stage], ch[stage], strides=(1, 2, 2), act="SWISH", norm="BATCH"),
                    ProjectedPoolHead(ch[stage], d // 2, n, p),
                )

    def forward(self, frontal: torch.Tensor, lateral: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, keyed by name."""
        cf = self.frontal(frontal)
        cs = self.lateral(lateral)
        out = {
            "fused": self.heads["fused"](self.fusion(cf[-1], cs[-1])),
            "frontal": self.heads["frontal"](cf[-1]),
            "lateral": self.heads["lateral"](cs[-1]),
        }
        for stage in self.config.side_heads:
            out[f"frontal_side{stage}"] = self.heads[f"frontal_side{stage}"](cf[stage - 1])
            out[f"lateral_side{stage}"] = self.heads[f"lateral_side{stage}"](cs[stage - 1])
        return out


def build_network(config: Mapping[str, Any] | NetworkConfig) -> CVFSNet:
    """The network of a model version from its stored config."""
    cfg = config if isinstance(config, NetworkConfig) else NetworkConfig.from_mapping(config)
    return CVFSNet(cfg)
