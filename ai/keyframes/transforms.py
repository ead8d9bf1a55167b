"""Preprocessing of coronary cine runs: reading, working size, training crops.

Array / dictionary twins in MONAI's idiom: :class:`ToWorkingFrames` (any frame size
and bit depth -> (T, 64, 64) float in [0, 1], vessels bright) and
:class:`RandTemporalCropd` (a training window that keeps both contrast segments).
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform, Transform

logger = logging.getLogger(__name__)

#: Side of the per-frame vessel map (STA-IPCon reshapes its 4096 features to 64 x 64).
MAP_SIZE = 64


def frame_rate(attributes: Mapping[str, Any]) -> float | None:
    """Frames per second from a header: FrameTime, CineRate or RecommendedDisplayFrameRate.

    FrameTime (0018,1063) is exact (ms per frame) and is what the Cine module's Frame
    Increment Pointer usually names; CineRate (0018,0040) and
    RecommendedDisplayFrameRate (0008,2144) are integers (12.5 fps cannot be written).
    """
    ft = attributes.get("FrameTime")
    if ft not in (None, ""):
        try:
            if float(ft) > 0:
                return 1000.0 / float(ft)
        except (TypeError, ValueError):
            pass
    vector = attributes.get("FrameTimeVector")
    if isinstance(vector, list | tuple) and len(vector) > 1:
        steps = [float(v) for v in vector[1:] if float(v) > 0]
        if steps:
            return 1000.0 / float(np.median(steps))
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        value = attributes.get(key)
        if value not in (None, ""):
            try:
                if float(value) > 0:
                    return float(value)
            except (TypeError, ValueError):
                continue
    return None


def read_run(path: Path | str) -> tuple[np.ndarray, float | None, pydicom.Dataset]:
    """All frames of a multi-frame image as (T, H, W), its frame rate and its header."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ValueError(f"{path}: expected monochrome frames, got shape {pixels.shape}")
    attrs = {k: ds.get(k) for k in ("FrameTime", "FrameTimeVector", "CineRate",
                                     "RecommendedDisplayFrameRate")}
    return pixels, frame_rate(attrs), ds


def to_working_frames(frames: np.ndarray | torch.Tensor, size: int = MAP_SIZE,
                      invert: bool = True) -> torch.Tensor:
    """(T, H, W) frames of any size and depth -> (T, size, size) float32 in [0, 1].

    Area-averaging keeps the partial-volume darkening of vessels thinner than a
    working pixel.  Intensities are scaled by the run's 1st / 99.5th percentiles (one
    window for the whole run, so contrast arrival is not normalised away) and inverted
    so that opacified vessels are bright (XA MONOCHROME2: contrast is dark).
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    x = x.to(torch.float32)
    if x.shape[-1] != size or x.shape[-2] != size:
        h, w = x.shape[-2:]
        if h % size == 0 and w % size == 0:
            x = F.avg_pool2d(x[:, None], (h // size, w // size))[:, 0]
        else:
            x = F.adaptive_avg_pool2d(x[:, None], size)[:, 0]
    sample = x[:: max(1, x.shape[0] // 16)].flatten()
    lo, hi = torch.quantile(sample, torch.tensor([0.01, 0.995]))
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
    return 1.0 - x if invert else x


class ToWorkingFrames(Transform):
    """Array transform: :func:`to_working_frames`."""

    def __init__(self, size: int = MAP_SIZE) -> None:
        self.size = size

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return to_working_frames(frames, self.size)


def keyframe_segments(start: float, apex: float, end: float) -> np.ndarray:
    """The two actions of a run in frames: filling [start, apex], wash-out [apex, end]."""
    return np.array([[start, apex], [apex, end]], np.float32)


class RandTemporalCropd(RandomizableTransform, MapTransform):
    """Crop (and pad) a run to ``length`` steps, keeping both segments when they fit.

    ActionFormer trains on windows of ``max_seq_len`` (128) features; a window that
    holds the whole start..end span is drawn uniformly, otherwise a window is drawn
    over the span and segments are clipped to it.  Shorter runs are zero-padded and
    the ``mask`` key marks the valid steps.

    Keys (those present) are cropped along their first axis; ``segments`` (2, 2) in
    frames is shifted, ``length`` read.
    """

    def __init__(self, keys: tuple[Hashable, ...] = ("frames", "vessel", "maps"),
                 length: int = 128, margin: int = 3) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.length, self.margin = length, margin
        self._offset = 0

    def randomize(self, data: Any = None) -> None:
        total, lo, hi = data
        if total <= self.length:
            self._offset = 0
            return
        first = max(0, int(hi) + self.margin + 1 - self.length)
        last = min(total - self.length, max(0, int(lo) - self.margin))
        if first > last:  # the span is longer than the window: any window over it
            first, last = max(0, int(lo) - self.length // 2), min(total - self.length, int(lo))
            first = min(first, last)
        self._offset = int(self.R.randint(first, last + 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        total = int(d["length"])
        seg = np.asarray(d["segments"], np.float32)
        self.randomize((total, seg.min(), seg.max()))
        off = self._offset
        n = min(self.length, total - off)
        for key in self.key_iterator(d):
            arr = torch.as_tensor(d[key])
            out = arr.new_zeros((self.length, *arr.shape[1:]))
            out[:n] = arr[off:off + n]
            d[key] = out
        d["segments"] = torch.as_tensor(np.clip(seg - off, 0, n - 1), dtype=torch.float32)
        mask = torch.zeros(self.length, dtype=torch.bool)
        mask[:n] = True
        d["mask"] = mask
        return d


def run_background(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W) working frames -> (H, W): the per-pixel 20th percentile over time.

    Vessels are bright in working frames only while filled with contrast (and move
    with the heart), so a low percentile keeps the catheter, spine and ribs and drops
    the vessels.
    """
    x = frames.float()
    return torch.quantile(x.reshape(x.shape[0], -1), 0.2, dim=0).reshape(x.shape[1:]).to(
        frames.dtype if frames.dtype.is_floating_point else torch.float32)


def working_frames_u8(frames: np.ndarray | torch.Tensor, size: int = MAP_SIZE) -> torch.Tensor:
    """:func:`to_working_frames` quantised to uint8 (what training caches and predict sees)."""
    return (to_working_frames(frames, size) * 255.0).round().to(torch.uint8)


class PrepareRund(Transform):
    """A :class:`~ai.keyframes.synthetic.KeyframeSample` -> dict of tensors (deterministic).

    Runs with pixels give ``frames`` (T, 64, 64) uint8 working frames (vessels bright)
    ``background`` (64, 64) uint8 (:func:`run_background`) and ``vessel`` (T, 64, 64)
    uint8 ground-truth maps (x 255; zeros if unknown); runs
    from ``vessel.json`` give ``maps`` (T, 64, 64) float16.  Every run gives
    ``segments`` (2, 2) in frames, ``labels`` (0, 1) and ``length``.
    """

    def __call__(self, sample: Any) -> dict[str, Any]:
        from ai.keyframes.synthetic import KeyframeSample

        if not isinstance(sample, KeyframeSample):
            raise TypeError(f"expected a KeyframeSample, got {type(sample).__name__}")
        out: dict[str, Any] = {}
        if sample.maps is not None:
            out["maps"] = torch.as_tensor(sample.maps, dtype=torch.float16)
        else:
            frames, vessel = sample.pixels()
            out["frames"] = working_frames_u8(frames)
            out["background"] = run_background(out["frames"]).round().to(torch.uint8)
            if vessel is not None:
                out["vessel"] = torch.as_tensor(np.round(np.asarray(vessel) * 255.0),
                                                dtype=torch.uint8)
            else:
                out["vessel"] = torch.zeros_like(out["frames"])
        out["segments"] = keyframe_segments(*sample.keyframes)
        out["labels"] = torch.tensor([0, 1], dtype=torch.long)
        out["length"] = sample.num_frames
        return out


def read_working_frames(path: Path | str, chunk: int = 32
                        ) -> tuple[torch.Tensor, float | None, pydicom.Dataset]:
    """Working frames of a multi-frame file: (T, 64, 64) uint8, frame rate and header.

    Frames are read lazily (memory-mapped for native Pixel Data) and area-averaged in
    chunks, so a 200-frame 1024 x 1024 run never exists as float in memory.
    MONOCHROME1 runs are not inverted (their vessels are already bright).
    """
    from ai.core.pixels import FrameReader

    with FrameReader(path) as reader:
        header = reader.header
        pooled = []
        batch: list[np.ndarray] = []
        for frame in reader:
            batch.append(np.asarray(frame))
            if len(batch) == chunk:
                pooled.append(_pool(np.stack(batch)))
                batch = []
        if batch:
            pooled.append(_pool(np.stack(batch)))
    x = torch.cat(pooled)
    attrs = {k: header.get(k) for k in ("FrameTime", "FrameTimeVector", "CineRate",
                                         "RecommendedDisplayFrameRate")}
    invert = str(header.get("PhotometricInterpretation", "MONOCHROME2")) != "MONOCHROME1"
    frames = (to_working_frames(x, MAP_SIZE, invert=invert) * 255.0).round().to(torch.uint8)
    return frames, frame_rate(attrs), header


def _pool(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames.astype(np.float32, copy=False))
    h, w = x.shape[-2:]
    if h % MAP_SIZE == 0 and w % MAP_SIZE == 0:
        return F.avg_pool2d(x[:, None], (h // MAP_SIZE, w // MAP_SIZE))[:, 0]
    return F.adaptive_avg_pool2d(x[:, None], MAP_SIZE)[:, 0]
