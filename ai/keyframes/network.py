"""STA-IPCon on MONAI blocks: per-frame vessel maps -> long-term attention -> pyramid.

``methods-notes.md`` §2.2.  The network takes a coronary cine run at working size
(T, 64, 64) and returns, for every point of a temporal feature pyramid, two class
logits (0 = contrast filling, 1 = wash-out) and two boundary offsets, ActionFormer
style.  Parts, in order:

* **Vessel maps** (:func:`vessel_stage`): a small MONAI ``BasicUNet`` trained on
  synthetic vessel masks, or :class:`HessianVesselness`, a fixed multi-scale ridge
  filter; both give one 64 x 64 map per frame (the stand-in for SVS-Net features).
* **Long-term spatiotemporal attention** (:class:`LongTermAttention`): a ConvLSTM
  whose gates are MONAI ``Convolution`` blocks, a residual, and a per-frame attention
  map A from MONAI ``Convolution`` blocks; x <- x + x * A.  Foreground (h * A) and
  background (h * (1 - A)) embeddings feed the image-wise contrastive loss.
* **Patch-wise projection** (:func:`patch_projection`): a 5 x 5 patch of the first
  frame's map becomes a fixed convolution kernel for every frame.
* **Temporal pyramid** (:class:`TemporalPyramid`): two masked 1-D convolutions embed
  the 4096-vectors, MONAI ``TransformerBlock`` layers attend inside local windows
  (``attn_mask``), and each branch level halves the time axis.
* **Heads** (:class:`PointHeads`): shared over levels, as ActionFormer's.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, TransformerBlock
from monai.networks.nets import BasicUNet
from torch import nn

from ai.keyframes.transforms import MAP_SIZE

logger = logging.getLogger(__name__)

DEFAULT_NETWORK: dict[str, Any] = {
    "vessel": "filter",  # "filter" (HessianVesselness) or "unet" (BasicUNet)
    "unet_features": [8, 8, 16, 32, 64, 8],
    "filter_sigmas": [0.7, 1.1, 1.6],
    # The UNet also sees the run's background (per-pixel 20th percentile over time of the
    # working frames, where vessels are bright only while filled), a cheap stand-in for
    # SVS-Net's multi-frame input: measured AUC 0.955 vs 0.945 for frames alone.
    "unet_background": True,
    "vessel_train_frames": 16,  # frames per run on which the UNet is trained each step
    # Training schedule (in steps): first the UNet alone, then scheduled teacher forcing:
    # the temporal net starts on ground-truth vessel maps and switches, run by run, to
    # the (detached) UNet maps by ``teacher_until``.
    "vessel_only_steps": 200,
    "teacher_until": 400,
    "lstm_hidden": [4, 4, 1],
    "lstm_pool": 2,  # the ConvLSTM runs on 32 x 32 (its 64 x 64 backward is 10x slower)
    "embed_dim": 64,
    "num_heads": 4,
    "mlp_dim": 128,
    "window": 4,  # attend to +-window steps on every level
    "stem_blocks": 2,
    "levels": 5,  # strides 1, 2, 4, 8, 16
    "regression_ranges": [[0, 4], [4, 8], [8, 16], [16, 32], [32, 10000]],
    "contrast_dim": 64,
    "random_patch": True,
    "prior_prob": 0.01,
    "num_classes": 2,
}


# ---------------------------------------------------------------------------
# Vessel maps
# ---------------------------------------------------------------------------


class HessianVesselness(nn.Module):
    """A fixed multi-scale ridge filter for bright tubes (Frangi-like, no training).

    For each scale sigma, the Hessian of the Gaussian-smoothed frame gives eigenvalues
    |l1| <= |l2|; a bright vessel has l2 << 0 and |l1| small.  The response is
    sigma^2 * max(0, -l2) * exp(-(l1 / l2)^2 / (2 * 0.5^2)) (scale-normalised), the
    maximum over scales, scaled by ``gain`` and clipped to [0, 1].
    """

    g0: torch.Tensor  # buffers (registered in __init__)
    g1: torch.Tensor
    g2: torch.Tensor
    s2: torch.Tensor

    def __init__(self, sigmas: Sequence[float] = (0.7, 1.1, 1.6), gain: float = 8.0) -> None:
        super().__init__()
        self.gain = gain
        radius = int(math.ceil(3 * max(sigmas)))
        xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g0, g1, g2 = [], [], []
        for s in sigmas:
            g = torch.exp(-xs ** 2 / (2 * s * s))
            g = g / g.sum()
            g0.append(g)
            g1.append(-xs / (s * s) * g)
            g2.append((xs ** 2 / s ** 4 - 1 / (s * s)) * g)
        self.register_buffer("g0", torch.stack(g0), persistent=False)
        self.register_buffer("g1", torch.stack(g1), persistent=False)
        self.register_buffer("g2", torch.stack(g2), persistent=False)
        self.register_buffer("s2", torch.tensor([s * s for s in sigmas]), persistent=False)
        self.radius = radius

    def _sep(self, x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
        # x (N, S, H, W): one channel per scale, depthwise separable convolution.
        n = kx.shape[0]
        x = F.conv2d(F.pad(x, (self.radius, self.radius, 0, 0), mode="replicate"),
                     kx.view(n, 1, 1, -1), groups=n)
        return F.conv2d(F.pad(x, (0, 0, self.radius, self.radius), mode="replicate"),
                        ky.view(n, 1, -1, 1), groups=n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) frames in [0, 1] (vessels bright) -> (N, 1, H, W) vesselness."""
        xs = x.expand(-1, self.g0.shape[0], -1, -1)
        hxx = self._sep(xs, self.g2, self.g0)
        hyy = self._sep(xs, self.g0, self.g2)
        hxy = self._sep(xs, self.g1, self.g1)
        tr, det = hxx + hyy, hxx * hyy - hxy * hxy
        disc = torch.sqrt(((tr * tr) / 4 - det).clamp_min(0))
        la, lb = tr / 2 + disc, tr / 2 - disc
        swap = la.abs() > lb.abs()
        l1, l2 = torch.where(swap, lb, la), torch.where(swap, la, lb)
        ratio = l1 / l2.abs().clamp_min(1e-6)
        v = self.s2.view(1, -1, 1, 1) * (-l2).clamp_min(0) * torch.exp(-ratio ** 2 / 0.5)
        return (self.gain * v.amax(dim=1, keepdim=True)).clamp(0.0, 1.0)


def vessel_stage(config: Mapping[str, Any]) -> nn.Module:
    """The per-frame vessel map module named by ``config["vessel"]``."""
    if config["vessel"] == "unet":
        unet = BasicUNet(spatial_dims=2, in_channels=2 if config["unet_background"] else 1,
                         out_channels=1,
                         features=tuple(config["unet_features"]), dropout=0.0)
        # Vessel covers ~3 % of a frame: start every pixel there (logit -3.5) instead of
        # at 0.5, or the temporal net first sees maps that are half "vessel" everywhere.
        nn.init.constant_(cast(torch.Tensor, unet.final_conv.bias), -3.5)
        return unet
    if config["vessel"] == "filter":
        return HessianVesselness(tuple(config["filter_sigmas"]))
    raise ValueError(f"network.vessel must be 'unet' or 'filter', not {config['vessel']!r}")


# ---------------------------------------------------------------------------
# Long-term spatiotemporal attention
# ---------------------------------------------------------------------------


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell; the four gates come from one MONAI ``Convolution`` (3 x 3)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = Convolution(spatial_dims=2, in_channels=in_channels + hidden,
                                 out_channels=4 * hidden, kernel_size=3, conv_only=True)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM over (B, T, C, H, W); returns the last layer's outputs."""

    def __init__(self, in_channels: int, hidden: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *hidden]
        self.cells = nn.ModuleList(ConvLSTMCell(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, hgt, wid = x.shape
        seq = x
        for cell in cast(Sequence[ConvLSTMCell], self.cells):
            h = x.new_zeros(b, cell.hidden, hgt, wid)
            c = torch.zeros_like(h)
            outs = []
            for step in range(t):
                h, c = cell(seq[:, step], (h, c))
                outs.append(h)
            seq = torch.stack(outs, dim=1)
        return seq


class LongTermAttention(nn.Module):
    """ConvLSTM + residual -> per-frame attention A; returns x + x * A and fg/bg embeddings.

    The attention net is STA-IPCon's (3 x 3 convs 1 -> 8 -> 16 with batch norm and
    ReLU, a 1 x 1 conv to one channel, sigmoid).  The foreground h * A and background
    h * (1 - A) of each frame are embedded by one shared projection for the image-wise
    contrastive loss.  With ``pool`` > 1 the recurrent and attention nets run on maps
    average-pooled by ``pool`` and A is upsampled back: on this CPU the 64 x 64
    version costs 8-10 s per training step (batch 4 x 128 frames), the 32 x 32 one ~2 s.
    """

    def __init__(self, hidden: Sequence[int], contrast_dim: int, pool: int = 1) -> None:
        super().__init__()
        if hidden[-1] != 1:
            raise ValueError("the last ConvLSTM layer must have one channel (a map per frame)")
        self.pool = pool
        self.lstm = ConvLSTM(1, hidden)
        self.attention = nn.Sequential(
            Convolution(2, 1, 8, kernel_size=3, act="RELU", norm="BATCH"),
            Convolution(2, 8, 16, kernel_size=3, act="RELU", norm="BATCH"),
            Convolution(2, 16, 1, kernel_size=1, conv_only=True),
            nn.Sigmoid(),
        )
        n = (MAP_SIZE // pool) ** 2
        self.project = nn.Sequential(nn.Linear(n, 2 * contrast_dim), nn.ReLU(),
                                     nn.Linear(2 * contrast_dim, contrast_dim))

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
        """(B, T, 64, 64) -> attended maps, attention, fg and bg embeddings (B, T, d)."""
        b, t, hgt, wid = maps.shape
        small = F.avg_pool2d(maps, self.pool) if self.pool > 1 else maps
        x = small[:, :, None]
        h = self.lstm(x) + x  # (B, T, 1, h, w)
        h2 = h.reshape(b * t, 1, *small.shape[-2:])
        att = self.attention(h2)
        fg = self.project((h2 * att).reshape(b, t, -1))
        bg = self.project((h2 * (1 - att)).reshape(b, t, -1))
        if self.pool > 1:
            att = F.interpolate(att, size=(hgt, wid), mode="bilinear", align_corners=False)
        att = att.reshape(b, t, hgt, wid)
        return maps + maps * att, att, fg, bg


def patch_projection(maps: torch.Tensor, training: bool, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """STA-IPCon's patch-wise contrastive projection, as a residual.

    A 5 x 5 patch of each run's first map (random centre in [2, 61) while training, the
    map centre at inference so that prediction is deterministic) is made zero-mean,
    unit-norm and used as a fixed convolution kernel on every frame; the ReLU of the
    response is added to the maps.  STA-IPCon replaces the maps by the response; with
    vessel maps whose first frame is mostly empty, a raw patch can be all zeros, so the
    kernel is normalised and the projection added instead (measured to train stably).
    """
    b, t, hgt, wid = maps.shape
    out = []
    for i in range(b):
        if training:
            cy, cx = (int(v) for v in torch.randint(2, min(hgt, wid) - 3, (2,),
                                                     generator=generator))
        else:
            cy, cx = hgt // 2, wid // 2
        k = maps[i, 0, cy - 2:cy + 3, cx - 2:cx + 3].detach()
        k = k - k.mean()
        k = k / k.norm().clamp_min(1e-3)
        out.append(maps[i] + F.relu(_conv5x5(maps[i], k)))
    return torch.stack(out)


def _conv5x5(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Zero-padded 5 x 5 correlation of (T, H, W) with one kernel, as 25 shifted sums.

    Measured on this CPU: a one-channel ``conv2d`` backward through 128 x 64 x 64
    costs ~1.3 s (oneDNN), the shifted sums a few milliseconds.
    """
    h, w = x.shape[-2:]
    xp = F.pad(x, (2, 2, 2, 2))
    out = torch.zeros_like(x)
    for dy in range(5):
        for dx in range(5):
            out = out + k[dy, dx] * xp[:, dy:dy + h, dx:dx + w]
    return out


# ---------------------------------------------------------------------------
# Temporal pyramid (ActionFormer) on MONAI blocks
# ---------------------------------------------------------------------------


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of (B, C, T) at each time step (ActionFormer's LN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def local_attention_mask(mask: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T) valid steps -> (B, 1, T, T) boolean mask: |i - j| <= window and j valid.

    MONAI's ``SABlock`` only forwards a full (query x key) mask through
    ``scaled_dot_product_attention`` (``use_flash_attention=True``); its einsum path
    takes (B, T) key masks only.  A padded query row keeps its own diagonal so that
    no softmax row is empty (NaN); padded outputs are zeroed afterwards.
    """
    t = mask.shape[1]
    idx = torch.arange(t, device=mask.device)
    band = (idx[None, :] - idx[:, None]).abs() <= window
    allowed = band[None] & mask[:, None, :]
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=mask.device)[None]
    return allowed[:, None]


class LocalTransformer(nn.Module):
    """A MONAI ``TransformerBlock`` over (B, C, T) with a local window and padding mask."""

    def __init__(self, dim: int, mlp_dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.block = TransformerBlock(hidden_size=dim, mlp_dim=mlp_dim, num_heads=heads,
                                      dropout_rate=0.0, use_flash_attention=True)
        self.window = window

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.block(x.transpose(1, 2), attn_mask=local_attention_mask(mask, self.window))
        return y.transpose(1, 2) * mask[:, None].to(y.dtype)


class TemporalPyramid(nn.Module):
    """Embedding convs, stem transformers and down-sampling branch levels.

    Returns one (B, D, T_l) feature map and (B, T_l) mask per level l, T_l = T / 2^l.
    """

    def __init__(self, in_dim: int, dim: int, heads: int, mlp_dim: int, window: int,
                 stem_blocks: int, levels: int) -> None:
        super().__init__()
        self.embed = nn.ModuleList([
            Convolution(1, in_dim, dim, kernel_size=3, conv_only=True),
            Convolution(1, dim, dim, kernel_size=3, conv_only=True),
        ])
        self.embed_norm = nn.ModuleList([ChannelNorm(dim), ChannelNorm(dim)])
        self.stem = nn.ModuleList(LocalTransformer(dim, mlp_dim, heads, window)
                                  for _ in range(stem_blocks))
        self.branch = nn.ModuleList(LocalTransformer(dim, mlp_dim, heads, window)
                                    for _ in range(levels - 1))
        self.down = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        m = mask[:, None].to(x.dtype)
        for conv, norm in zip(self.embed, self.embed_norm, strict=True):
            x = F.relu(norm(conv(x) * m)) * m
        for block in self.stem:
            x = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x = self.down(x)
            mask = mask[:, ::2]
            x = block(x * mask[:, None].to(x.dtype), mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks


class Scale(nn.Module):
    """A learnable scalar per pyramid level (ActionFormer's regression scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PointHeads(nn.Module):
    """Classification and regression heads shared over levels (1-D convs, k = 3)."""

    def __init__(self, dim: int, num_classes: int, levels: int, prior_prob: float) -> None:
        super().__init__()

        def tower() -> nn.ModuleList:
            return nn.ModuleList([Convolution(1, dim, dim, kernel_size=3, conv_only=True),
                                  ChannelNorm(dim),
                                  Convolution(1, dim, dim, kernel_size=3, conv_only=True),
                                  ChannelNorm(dim)])

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_out = Convolution(1, dim, num_classes, kernel_size=3, conv_only=True)
        self.reg_out = Convolution(1, dim, 2, kernel_size=3, conv_only=True)
        self.scales = nn.ModuleList(Scale() for _ in range(levels))
        # Focal-loss prior: every point starts as background with p = prior_prob.
        bias = cast(torch.Tensor, cast(nn.Conv1d, self.cls_out.conv).bias)
        nn.init.constant_(bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _run(tower: nn.ModuleList, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(tower), 2):
            x = F.relu(tower[i + 1](tower[i](x) * m))
        return x

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, offsets = [], []
        for level, (x, mask) in enumerate(zip(feats, masks, strict=True)):
            m = mask[:, None].to(x.dtype)
            logits.append((self.cls_out(self._run(self.cls_tower, x, m)) * m).transpose(1, 2))
            reg = self.reg_out(self._run(self.reg_tower, x, m))
            offsets.append((F.relu(self.scales[level](reg)) * m).transpose(1, 2))
        return logits, offsets


# ---------------------------------------------------------------------------
# The whole network
# ---------------------------------------------------------------------------


class KeyframesNet(nn.Module):
    """Vessel maps -> long-term attention -> patch projection -> pyramid -> point heads.

    Parameters
    ----------
    config : mapping
        :data:`DEFAULT_NETWORK` keys.
    """

    train_steps: torch.Tensor  # buffer: optimiser steps taken (the training schedule)

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = {**DEFAULT_NETWORK, **dict(config)}
        self.config = cfg
        self.vessel = vessel_stage(cfg)
        self.long_term = LongTermAttention(cfg["lstm_hidden"], cfg["contrast_dim"],
                                           cfg["lstm_pool"])
        self.pyramid = TemporalPyramid(MAP_SIZE * MAP_SIZE, cfg["embed_dim"], cfg["num_heads"],
                                       cfg["mlp_dim"], cfg["window"], cfg["stem_blocks"],
                                       cfg["levels"])
        self.heads = PointHeads(cfg["embed_dim"], cfg["num_classes"], cfg["levels"],
                                cfg["prior_prob"])
        self.strides = [2 ** level for level in range(cfg["levels"])]
        # Training steps seen (drives the teacher-forcing schedule; saved with the weights).
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.regression_ranges = [tuple(r) for r in cfg["regression_ranges"]]
        if len(self.regression_ranges) != cfg["levels"]:
            raise ValueError("one regression range per pyramid level")

    @property
    def max_stride(self) -> int:
        """Sequence lengths must be a multiple of this."""
        return self.strides[-1]

    def vessel_only(self) -> bool:
        """Whether the training schedule is still in its UNet-only phase."""
        return int(self.train_steps) < int(self.config["vessel_only_steps"])

    def teacher_probability(self) -> float:
        """Probability that a training run's temporal input is its ground-truth maps."""
        start = int(self.config["vessel_only_steps"])
        span = int(self.config["teacher_until"]) - start
        done = int(self.train_steps) - start
        return 1.0 if done < 0 else max(0.0, 1.0 - done / span) if span > 0 else 0.0

    @property
    def uses_background(self) -> bool:
        """Whether the vessel stage takes the run's background as a second channel."""
        return isinstance(self.vessel, BasicUNet) and bool(self.config["unet_background"])

    def vessel_input(self, frames: torch.Tensor, background: torch.Tensor | None
                     ) -> torch.Tensor:
        """(N, C, 64, 64) vessel-stage input from (N, 64, 64) frames and (N, 64, 64) or
        (64, 64) background (in [0, 1])."""
        x = frames[:, None]
        if self.uses_background:
            if background is None:
                raise ValueError("this vessel UNet needs the run's background")
            x = torch.cat([x, background.expand_as(frames)[:, None]], dim=1)
        return x

    def vessel_maps(self, frames: torch.Tensor, background: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """(N, 64, 64) working frames (vessels bright) -> (N, 64, 64) vessel maps in [0, 1]."""
        out = self.vessel(self.vessel_input(frames, background))
        if isinstance(self.vessel, BasicUNet):
            out = torch.sigmoid(out)
        return out[:, 0]

    def forward(self, maps: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Run the temporal network.

        Parameters
        ----------
        maps : torch.Tensor
            (B, T, 64, 64) vessel maps; T a multiple of :attr:`max_stride`.
        mask : torch.Tensor
            (B, T) bool, True on real frames.

        Returns
        -------
        dict
            ``logits`` / ``offsets``: per level (B, T_l, C) and (B, T_l, 2);
            ``masks``: per level (B, T_l); ``fg`` / ``bg``: (B, T, d) contrast
            embeddings; ``attention``: (B, T, 64, 64).
        """
        b, t = maps.shape[:2]
        if t % self.max_stride:
            raise ValueError(f"sequence length {t} is not a multiple of {self.max_stride}")
        maps = maps.to(torch.float32) * mask[:, :, None, None].to(torch.float32)
        x, att, fg, bg = self.long_term(maps)
        if self.config["random_patch"]:
            x = patch_projection(x, self.training)
        feats, masks = self.pyramid(x.reshape(b, t, -1).transpose(1, 2), mask)
        logits, offsets = self.heads(feats, masks)
        return {"logits": logits, "offsets": offsets, "masks": masks, "fg": fg, "bg": bg,
                "attention": att}

    def points(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        """(sum_l T_l, 4) pyramid points for a sequence of ``length`` (see
        :func:`pyramid_points`)."""
        return pyramid_points(self.config, length, device)


def pyramid_points(config: Mapping[str, Any], length: int,
                   device: torch.device | None = None) -> torch.Tensor:
    """(sum_l T_l, 4) rows (time in frames, range low, range high, stride).

    Level l has a point every 2^l frames; a point regresses segments whose farther
    boundary lies within the level's regression range (ActionFormer).
    """
    cfg = {**DEFAULT_NETWORK, **dict(config)}
    rows = []
    for level, (lo, hi) in enumerate(cfg["regression_ranges"]):
        stride = 2 ** level
        t = torch.arange(0, length, stride, dtype=torch.float32, device=device)
        rows.append(torch.stack([t, torch.full_like(t, lo), torch.full_like(t, hi),
                                 torch.full_like(t, stride)], dim=1))
    return torch.cat(rows)
