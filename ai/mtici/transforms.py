"""CVFSNet preprocessing: whole run resampled to T×H×W, z-scored per clip.

The method (``Data/dataset.py``) resizes the *whole* run trilinearly
(``align_corners=True``) to (8, 256, 256) and z-scores it (torchio
``ZNormalization``); "frame sampling" is temporal resampling, not frame picking.
Here the temporal part is the same linear interpolation, and only the frames it
touches are decoded (at most 2·T of them), each shrunk right away with an
antialiased bilinear resize, so a 1024² × 60-frame run never sits in memory as
float and thin vessels do not alias away when 1024 px become 64.

Array/dict twins as MONAI's transforms are: :class:`PrepareClip`, :class:`PrepareClipd`.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Transform
from pydicom.pixels import iter_pixels


def temporal_taps(n_frames: int, t_out: int) -> list[tuple[int, int, float]]:
    """(lower frame, upper frame, weight of upper) of each output time point.

    Linear interpolation with ``align_corners=True``: output ``i`` sits at
    ``i·(n_frames−1)/(t_out−1)``; the first and last frames are kept exactly.
    """
    if n_frames < 1 or t_out < 1:
        raise ValueError("frame counts must be positive")
    if t_out == 1 or n_frames == 1:
        return [(0, 0, 0.0)] * t_out
    taps = []
    for i in range(t_out):
        pos = i * (n_frames - 1) / (t_out - 1)
        lo = min(int(np.floor(pos)), n_frames - 1)
        hi = min(lo + 1, n_frames - 1)
        taps.append((lo, hi, float(pos - lo)))
    return taps


def _resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) → (N, h, w), antialiased when shrinking."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    shrink = frames.shape[-2] > size[0] or frames.shape[-1] > size[1]
    return F.interpolate(frames[:, None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[:, 0]


def _zscore(clip: torch.Tensor) -> torch.Tensor:
    std = clip.std()
    return (clip - clip.mean()) / (std if std > 1e-6 else 1.0)


def prepare_frames(frames: Iterable[np.ndarray] | np.ndarray, n_frames: int, clip: Sequence[int]) -> np.ndarray:
    """Resample frames (yielded in order) to (1, T, H, W) float32, z-scored.

    ``frames`` may be a (N, H, W) array or an iterator over the frames that
    :func:`temporal_taps` needs, in ascending order (see :func:`needed_frames`).
    """
    t_out, h, w = (int(v) for v in clip)
    taps = temporal_taps(n_frames, t_out)
    needed = needed_frames(n_frames, t_out)
    source: Iterable[np.ndarray] = frames
    if isinstance(frames, np.ndarray) and len(frames) == n_frames:
        source = [frames[i] for i in needed]
    small: dict[int, torch.Tensor] = {}
    for index, frame in zip(needed, source, strict=True):
        tensor = torch.as_tensor(np.asarray(frame, dtype=np.float32))
        if tensor.ndim == 3:  # RGB-stored DSA (AmTICIS .dcm are 3-sample): use luminance
            tensor = tensor.mean(dim=-1)
        small[index] = _resize_frames(tensor[None], (h, w))[0]
    out = torch.stack([small[lo] * (1.0 - a) + small[hi] * a if a > 0 else small[lo] for lo, hi, a in taps])
    return _zscore(out)[None].numpy()


def needed_frames(n_frames: int, t_out: int) -> list[int]:
    """The frame indices :func:`prepare_frames` reads, ascending."""
    return sorted({i for lo, hi, a in temporal_taps(n_frames, t_out) for i in ((lo, hi) if a > 0 else (lo,))})


def read_dicom_clip(path: Path, clip: Sequence[int]) -> np.ndarray:
    """Read a multi-frame run lazily (only the frames used) → (1, T, H, W) z-scored."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    n_frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    needed = needed_frames(n_frames, int(clip[0]))
    if n_frames == 1:
        frames: Iterable[np.ndarray] = iter_pixels(path)
    else:
        frames = iter_pixels(path, indices=needed)
    return prepare_frames(frames, n_frames, clip)


class PrepareClip(Transform):
    """Array transform: (N, H, W) run or a DICOM/NIfTI path → (1, T, H, W) z-scored clip."""

    def __init__(self, clip: Sequence[int] = (8, 256, 256)) -> None:
        self.clip = tuple(int(v) for v in clip)

    def __call__(self, data: Any) -> np.ndarray:
        if isinstance(data, (str, Path)):
            from ai.mtici.datasets import read_run_clip

            return read_run_clip(Path(data), self.clip)
        array = np.asarray(data)
        return prepare_frames(array, int(array.shape[0]), self.clip)


class PrepareClipd(MapTransform):
    """Dict twin of :class:`PrepareClip` (keys such as ``"frontal"``, ``"lateral"``)."""

    def __init__(self, keys: Sequence[Hashable], clip: Sequence[int] = (8, 256, 256)) -> None:
        super().__init__(keys)
        self.prepare = PrepareClip(clip)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.prepare(out[key])
        return out
