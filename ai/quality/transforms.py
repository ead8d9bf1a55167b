"""Preprocessing: streaming MinIP of a DSA run, pad to square, resize, scale to [0, 1] by the background.

Array transforms and their dictionary twins, in MONAI's idiom.  The MinIP is
computed frame by frame into one buffer of the stored integer type: a
1024×1024×60 run costs one 2 MiB frame of working memory, not a float64 copy of
the run (480 MiB).  Native Pixel Data is memory-mapped (:class:`~ai.core.pixels.FrameReader`).
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, Transform
from monai.utils import convert_to_tensor

from ai.core.pixels import FrameReader

logger = logging.getLogger(__name__)


def streaming_minip(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise minimum over frames, keeping one buffer of the frames' own type.

    Raises
    ------
    ValueError
        ``frames`` is empty.
    """
    out: np.ndarray | None = None
    for frame in frames:
        if out is None:
            out = np.array(frame, copy=True)
        else:
            np.minimum(out, frame, out=out)
    if out is None:
        raise ValueError("a MinIP needs at least one frame")
    return out


def minip_from_file(path: Path | str) -> tuple[np.ndarray, pydicom.Dataset]:
    """MinIP of a multi-frame DICOM run (contrast dark), and the file's header.

    MONOCHROME1 data show contrast as high values, so their maximum is taken and
    inverted: the result always has contrast dark, as in MONOCHROME2.
    """
    reader = FrameReader(path)
    try:
        if reader.header.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
            top = streaming_max(reader)
            bits = int(reader.header.get("BitsStored", top.dtype.itemsize * 8))
            return ((1 << bits) - 1 - top.astype(np.int64)).astype(top.dtype), reader.header
        return streaming_minip(reader), reader.header
    finally:
        reader.close()


def streaming_max(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise maximum over frames (one buffer)."""
    out: np.ndarray | None = None
    for frame in frames:
        if out is None:
            out = np.array(frame, copy=True)
        else:
            np.maximum(out, frame, out=out)
    if out is None:
        raise ValueError("a projection needs at least one frame")
    return out


class MinIP(Transform):
    """(T, H, W) or (C, T, H, W) run → (1, H, W) MinIP as float32."""

    def __call__(self, run: np.ndarray | torch.Tensor) -> np.ndarray:
        arr = np.asarray(run)
        if arr.ndim == 4:
            arr = arr[0]
        return streaming_minip(iter(arr)).astype(np.float32)[None]


class PadToSquare(Transform):
    """Pad (C, H, W) symmetrically to square with the image's median value.

    Not with zeros: black bars would look like collimator shutters, a label.
    """

    def __call__(self, img: np.ndarray) -> np.ndarray:
        _, h, w = img.shape
        if h == w:
            return img
        n = max(h, w)
        fill = float(np.median(img))
        out = np.full((img.shape[0], n, n), fill, dtype=img.dtype)
        y, x = (n - h) // 2, (n - w) // 2
        out[:, y:y + h, x:x + w] = img
        return out


class QualityPreprocess(Transform):
    """MinIP image (H, W) or (1, H, W) → network input (1, size, size) float32 in [0, 1].

    Pad to square, resize by area averaging (an anti-aliased downsampling, so noise
    and thin vessels look alike from any matrix size), then divide by the background
    level (the ``upper`` percentile, e.g. 98th: most of a MinIP is unopacified
    background), clip at ``headroom`` times the background and scale to [0, 1].
    Unlike a min-max stretch this keeps how dark the vessels are relative to the
    background: a stretch would blow a run without contrast (and its noise) up to
    full range and blur the contrast and noise labels.  The headroom keeps burned-in
    text, brighter than the background, visible (background maps to 1/headroom).
    """

    def __init__(self, size: int = 128, upper: float = 98.0, headroom: float = 1.5) -> None:
        self.size = size
        self.upper = upper
        self.headroom = headroom
        self.pad = PadToSquare()
        self.resize = Resize((size, size), mode="area")

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        arr = self.pad(arr)
        if arr.shape[-1] != self.size:
            arr = np.asarray(self.resize(torch.as_tensor(arr)))
        background = float(np.percentile(arr, self.upper))
        out = np.clip(arr / (max(background, 1e-6) * self.headroom), 0.0, 1.0)
        # A plain tensor, not a MetaTensor: the collated batch then stays a plain tensor.
        return convert_to_tensor(out, dtype=torch.float32, track_meta=False).contiguous()


class QualityPreprocessd(MapTransform):
    """Dictionary twin of :class:`QualityPreprocess`."""

    def __init__(self, keys: KeysCollection, size: int = 128, upper: float = 98.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fn = QualityPreprocess(size, upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fn(d[key])
        return d


def preprocess_config(config: Mapping[str, Any]) -> QualityPreprocess:
    """:class:`QualityPreprocess` from a module config's ``preprocessing`` section."""
    pre = config.get("preprocessing", {})
    return QualityPreprocess(int(pre.get("size", 128)),
                             float(pre.get("background_percentile", 98.0)),
                             float(pre.get("headroom", 1.5)))
