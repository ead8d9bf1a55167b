"""Preprocessing, augmentation and CCF-Net's coarse-to-fine encoding and decoding.

Coordinates are SCOORD pixels throughout (the centre of pixel (i, j) is (i + 0.5,
j + 0.5)), so resizing an image by a factor scales a point by exactly that factor and a
horizontal mirror maps x to W − x.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import affine_transform

from ai.spine.datasets import SpineSample
from ai.spine.labels import N_LANDMARKS, N_VERTEBRAE
from ai.spine.network import CLS, GRADE, HEAT, OFF_X, OFF_Y, SCHMORL, STRIDE

#: Preprocessing defaults (the spec's 512 for real data is a config value).
DEFAULT_PREPROCESSING: dict[str, Any] = {"input_size": 160, "lower_percentile": 0.5,
                                         "upper_percentile": 99.5}


def three_channels(slices: np.ndarray, key: int) -> np.ndarray:
    """(previous, key, next) slices as (3, H, W); the edge slice repeats at a series end."""
    n = len(slices)
    idx = [min(max(key + d, 0), n - 1) for d in (-1, 0, 1)]
    return np.asarray(slices[idx], dtype=np.float32)


def normalise_slices(slices: np.ndarray, config: Mapping[str, Any]) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Each slice scaled to [0, 1] on its own percentiles, resized to ``input_size``².

    CCF-Net rescales every slice to 0–255 on its own; the percentiles make that robust
    to a few hot pixels.  Returns the (S, size, size) float32 stack and the (x, y) factor
    from slice pixels to input pixels.
    """
    pre = {**DEFAULT_PREPROCESSING, **dict(config.get("preprocessing", {}))}
    img = np.asarray(slices, dtype=np.float32)
    # numpy percentiles and torch's antialiased bilinear resize do what MONAI's
    # ScaleIntensityRangePercentiles + Resize(anti_aliasing=True) do, in 1/20 of the
    # time (measured 0.35 s → 0.02 s for 5 × 160², which counts against 1 s per study).
    lo, hi = np.percentile(img.reshape(len(img), -1),
                           [float(pre["lower_percentile"]), float(pre["upper_percentile"])],
                           axis=1)
    img = (img - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    img = np.clip(img, 0.0, 1.0, out=img)
    size = int(pre["input_size"])
    h, w = img.shape[-2:]
    if (h, w) != (size, size):
        t = torch.from_numpy(np.ascontiguousarray(img))[None]
        img = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < max(h, w))[0].numpy()
    return img.astype(np.float32, copy=False), np.array([size / w, size / h], dtype=np.float32)


def preprocess(slices: np.ndarray, key: int, config: Mapping[str, Any]) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Network input (3, S, S) in [0, 1]: (previous, key, next), and the resize factor."""
    return normalise_slices(three_channels(slices, key), config)


@dataclass
class PreparedSample:
    """A sample whose slices are already normalised and resized (uint8, as CCF-Net keeps
    them): augmentation then costs a few milliseconds per item instead of tens."""

    slices: np.ndarray
    key_index: int
    factor: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    grades: np.ndarray
    schmorl: np.ndarray


def prepare(sample: SpineSample, config: Mapping[str, Any]) -> PreparedSample:
    """Normalise and resize a sample's slices once (key ± 2 kept)."""
    lo = max(0, sample.key_index - 2)
    hi = min(len(sample.slices), sample.key_index + 3)
    img, factor = normalise_slices(sample.slices[lo:hi], config)
    return PreparedSample(
        slices=np.round(img * 255.0).astype(np.uint8), key_index=sample.key_index - lo,
        factor=factor, coords=np.asarray(sample.coords, dtype=np.float64),
        labels=sample.labels(), grades=sample.disc_grades(), schmorl=sample.schmorl())


# ---------------------------------------------------------------------------
# Augmentation (image and points move together).
# ---------------------------------------------------------------------------


def random_affine(img: np.ndarray, points: np.ndarray, rng: np.random.Generator,
                  aug: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rotate, scale and shift (3, S, S) ``img`` and its (N, 2) SCOORD ``points``."""
    size = img.shape[-1]
    angle = math.radians(rng.uniform(-1, 1) * float(aug.get("rotate_deg", 15.0)))
    zoom = math.exp(rng.uniform(-1, 1) * math.log(1.0 + float(aug.get("scale", 0.1))))
    shift = rng.uniform(-1, 1, 2) * float(aug.get("shift", 0.06)) * size
    c, s = math.cos(angle), math.sin(angle)
    fwd = zoom * np.array([[c, -s], [s, c]])  # acts on (x, y)
    centre = np.array([size / 2, size / 2])
    new_points = (points - centre) @ fwd.T + centre + shift
    # scipy maps output (row, col) indices to input ones: swap x/y and undo the half pixel.
    inv = np.linalg.inv(fwd)
    inv_rc = inv[::-1, ::-1]
    centre_rc = centre[::-1] - 0.5
    offset = centre_rc - inv_rc @ (centre_rc + shift[::-1])
    out = np.stack([affine_transform(ch, inv_rc, offset=offset, order=1, mode="constant",
                                     cval=0.0) for ch in img])
    return out.astype(np.float32), new_points


def random_intensity(img: np.ndarray, rng: np.random.Generator,
                     aug: Mapping[str, Any]) -> np.ndarray:
    """Gamma, contrast, a smooth multiplicative bias field and Gaussian noise."""
    size = img.shape[-1]
    gamma = math.exp(rng.uniform(-1, 1) * float(aug.get("gamma", 0.35)))
    img = np.clip(img, 0, 1) ** gamma
    img = img * rng.uniform(1 - float(aug.get("contrast", 0.3)), 1 + float(aug.get("contrast",
                                                                                  0.3)))
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    coef = rng.uniform(-1, 1, 5) * float(aug.get("bias", 0.3))
    img = img * np.exp(coef[0] * xx + coef[1] * yy + coef[2] * xx**2 + coef[3] * yy**2
                       + coef[4] * xx * yy)
    img = img + rng.normal(0, rng.uniform(0, float(aug.get("noise", 0.03))), img.shape)
    return img.astype(np.float32)


# ---------------------------------------------------------------------------
# Coarse-to-fine encoding (targets) and decoding (predictions).
# ---------------------------------------------------------------------------


def grid_centres(n_rows: int, n_cols: int, stride: int = STRIDE) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """(y, x) centres of the grid cells in input pixels: (i + 0.5) × stride."""
    return (np.arange(n_rows) + 0.5) * stride, (np.arange(n_cols) + 0.5) * stride


def encode(points: np.ndarray, size: int, sigma_cells: float = 1.0, threshold: float = 0.3,
           stride: int = STRIDE) -> dict[str, np.ndarray]:
    """CCF-Net's targets for (N, 2) SCOORD ``points`` on a ``size``² input.

    Returns ``heat`` (N, g, g) Gaussians of σ = ``sigma_cells`` cells normalised to peak
    1, ``off_y``/``off_x`` (N, g, g) offsets (point − cell centre) / stride, and
    ``mask`` (N,) 1 where the landmark exists and its unnormalised peak reaches
    ``threshold`` (it lies on the grid).
    """
    g = size // stride
    cy, cx = grid_centres(g, g, stride)
    n = len(points)
    heat = np.zeros((n, g, g), np.float32)
    off_y = np.zeros((n, g, g), np.float32)
    off_x = np.zeros((n, g, g), np.float32)
    mask = np.zeros(n, np.float32)
    sigma = sigma_cells * stride
    for i, (x, y) in enumerate(points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        dy, dx = y - cy[:, None], x - cx[None, :]
        h = np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
        if h.max() >= threshold:
            mask[i] = 1.0
        heat[i] = h / max(h.max(), 1e-12)
        off_y[i], off_x[i] = dy / stride, dx / stride
    return {"heat": heat, "off_y": off_y, "off_x": off_x, "mask": mask}


@dataclass
class SpinePrediction:
    """Decoded output for one slice, in the slice's own SCOORD pixels.

    ``coords`` (11, 2) (column, row); ``score`` (11,) heat at the chosen cell;
    ``prob_abnormal`` (11,) sigmoid of the class logit; ``grade_probs`` (6, 4) disc
    morphology v1..v4; ``schmorl`` (6,) v5 probability; ``tags`` the Tianchi tags.
    """

    coords: np.ndarray
    score: np.ndarray
    prob_abnormal: np.ndarray
    grade_probs: np.ndarray
    schmorl: np.ndarray
    tags: tuple[str, ...]


def tags_from(prob_abnormal: np.ndarray, grade_probs: np.ndarray, schmorl: np.ndarray,
              threshold: float = 0.5) -> tuple[str, ...]:
    """Tianchi tags: the binary head decides normal/abnormal, the grade head which grade."""
    tags = []
    for i in range(N_LANDMARKS):
        abnormal = prob_abnormal[i] >= threshold
        if i < N_VERTEBRAE:
            tags.append("v2" if abnormal else "v1")
            continue
        d = i - N_VERTEBRAE
        tag = f"v{2 + int(np.argmax(grade_probs[d, 1:]))}" if abnormal else "v1"
        tags.append(tag + (",v5" if schmorl[d] >= threshold else ""))
    return tuple(tags)


def decode(output: torch.Tensor | np.ndarray, factor: np.ndarray, stride: int = STRIDE,
           top_k: int = 1, vote_threshold: float = 0.3) -> SpinePrediction:
    """One sample's (49, g, g) output → landmarks on the original slice.

    Per landmark: the arg-max cell of its heatmap, plus its offsets: ``(cell + offset +
    0.5) × stride`` in input pixels, divided by ``factor`` (input / slice pixels).  With
    ``top_k`` > 1 the next cells whose heat exceeds ``vote_threshold`` vote too, each
    weighted by its heat (CCF-Net's ``ccf_decoder`` with ``vote="weighted"``).  Class,
    grade and v5 probabilities are read at the arg-max cell.
    """
    out = output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else output
    out = out.astype(np.float64)
    heat = out[HEAT]
    g_cols = heat.shape[-1]
    flat_heat = heat.reshape(N_LANDMARKS, -1)
    order = np.argsort(-flat_heat, axis=1, kind="stable")[:, :max(1, top_k)]
    rows, cols = order[:, 0] // g_cols, order[:, 0] % g_cols
    lm = np.arange(N_LANDMARKS)
    num = np.zeros((N_LANDMARKS, 2))
    den = np.zeros(N_LANDMARKS)
    for k in range(order.shape[1]):
        r, c = order[:, k] // g_cols, order[:, k] % g_cols
        h = flat_heat[lm, order[:, k]]
        w = np.where((k == 0) | (h > vote_threshold), np.abs(h) + 1e-9, 0.0)
        num[:, 0] += w * (c + out[OFF_X][lm, r, c] + 0.5) * stride
        num[:, 1] += w * (r + out[OFF_Y][lm, r, c] + 0.5) * stride
        den += w
    xy = num / den[:, None]
    coords = np.stack([xy[:, 0] / float(factor[0]), xy[:, 1] / float(factor[1])], axis=1)
    prob = 1.0 / (1.0 + np.exp(-out[CLS][lm, rows, cols]))
    d_rows, d_cols = rows[N_VERTEBRAE:], cols[N_VERTEBRAE:]
    logits = out[GRADE][:, d_rows, d_cols].T  # (6, 4)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    grades = e / e.sum(axis=1, keepdims=True)
    schmorl = 1.0 / (1.0 + np.exp(-out[SCHMORL][d_rows, d_cols]))
    return SpinePrediction(coords=coords, score=heat[lm, rows, cols], prob_abnormal=prob,
                           grade_probs=grades, schmorl=schmorl,
                           tags=tags_from(prob, grades, schmorl))


# ---------------------------------------------------------------------------
# Sample → tensors (the training loop's ``transform`` hook).
# ---------------------------------------------------------------------------


class SpineTransform:
    """Turn a :class:`SpineSample` into the network's input and CCF-Net's targets.

    With ``train=True`` the key slice jitters by ±1 (CCF-Net's annotation jitter),
    and the image is mirrored, rotated, scaled, shifted and its intensity perturbed;
    otherwise the result is deterministic.
    """

    def __init__(self, config: Mapping[str, Any], train: bool, seed: int = 0) -> None:
        self.config = config
        self.train = train
        self.aug = dict(config.get("augmentation", {}))
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: SpineSample | PreparedSample) -> dict[str, Any]:
        if not isinstance(sample, PreparedSample):
            sample = prepare(sample, self.config)
        key = sample.key_index
        rng = self.rng
        if self.train and self.aug.get("slice_jitter", True) and len(sample.slices) >= 3:
            key = int(np.clip(key + rng.integers(-1, 2), 1, len(sample.slices) - 2))
        img = three_channels(sample.slices, key) / np.float32(255.0)
        pts = sample.coords * sample.factor
        size = img.shape[-1]
        if self.train:
            if rng.random() < float(self.aug.get("flip", 0.5)):
                img = img[..., ::-1].copy()
                pts = np.stack([size - pts[:, 0], pts[:, 1]], axis=1)
            if rng.random() < float(self.aug.get("affine_p", 0.8)):
                img, pts = random_affine(img, pts, rng, self.aug)
            if rng.random() < float(self.aug.get("intensity_p", 0.8)):
                img = random_intensity(img, rng, self.aug)
        targets = encode(pts, size, float(self.config.get("loss", {}).get("sigma_cells", 1.0)))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "heat": torch.from_numpy(targets["heat"]),
            "off_y": torch.from_numpy(targets["off_y"]),
            "off_x": torch.from_numpy(targets["off_x"]),
            "mask": torch.from_numpy(targets["mask"]),
            "label": torch.from_numpy(sample.labels),
            "grade": torch.from_numpy(sample.grades),
            "schmorl": torch.from_numpy(sample.schmorl),
            "factor": torch.from_numpy(sample.factor),
        }
