"""The AmTICIS data set (Xu et al. 2025, zenodo 17790966) and the shared sample type.

Layout, as the method's ``Data/dataset.py`` and ``train_val_split.json`` use it:

* one file per view and run, ``NNNN_T<grade>_<C|S>[#before|#after|#middle]_anon.dcm``
  (the current loader reads the same stem as ``.nii.gz``); the grade is the second
  ``_`` token (``T0``, ``T1``, ``T2a``/``T2A``, ``T2b``/``T2B``, ``T3``);
* ``_C`` is the coronal (frontal) view, its lateral partner replaces ``_C`` by ``_S``;
* ``train_val_split.json`` = ``{"CORONAL_VIEW": {"train": [names], "val": [names]}}``
  lists coronal names only.

NIfTI is read by a small gzip + numpy reader (NIfTI-1 and -2 single files) so that no
extra dependency is needed for the one format.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai.mtici.labels import class_index, normalise_grade
from ai.mtici.transforms import prepare_frames, read_dicom_clip

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<id>\d+)_T(?P<grade>[0-3][abcABC]?)_(?P<view>[CS])(?P<suffix>#[^_]*)?_anon$")


@dataclass(frozen=True)
class MticiSample:
    """One frontal + lateral pair with its grade; pixels in memory or on disk.

    ``frontal``/``lateral`` are (T, H, W) arrays or paths (``.dcm`` or ``.nii.gz``).
    """

    case_id: str
    grade: str
    frontal: np.ndarray | Path
    lateral: np.ndarray | Path
    subset: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def label(self, mode: str = "4class") -> int:
        """Class index of the grade in ``mode``."""
        return class_index(self.grade, mode)


def parse_name(name: str) -> dict[str, str]:
    """Fields of an AmTICIS file name (``0007_T2b_C#after_anon.dcm`` → id, grade, view, suffix).

    Raises
    ------
    ValueError
        If the name does not follow the AmTICIS pattern.
    """
    stem = name
    for ext in (".nii.gz", ".dcm", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    match = _NAME.match(stem)
    if match is None:
        raise ValueError(f"not an AmTICIS file name: {name!r}")
    return {
        "id": match["id"],
        "grade": normalise_grade(match["grade"]),
        "view": match["view"],
        "suffix": (match["suffix"] or "").lstrip("#"),
        "stem": stem,
    }


def _resolve(root: Path, stem: str) -> Path | None:
    """The file of ``stem`` under ``root``: ``.dcm`` first, then ``.nii.gz`` as the method's
    newer loader does; searched recursively once per call."""
    for ext in (".dcm", ".nii.gz", ".nii"):
        direct = root / f"{stem}{ext}"
        if direct.is_file():
            return direct
    for ext in (".dcm", ".nii.gz", ".nii"):
        found = next(root.rglob(f"{stem}{ext}"), None)
        if found is not None:
            return found
    return None


def load_amticis(root: Path, subsets: Sequence[str] = ("train", "val")) -> list[MticiSample]:
    """Pairs of the AmTICIS tree at ``root``.

    With ``train_val_split.json`` at ``root`` the listed coronal names are used (their
    subset recorded); without it every ``*_C*`` file is.  A coronal file without its
    ``_S`` partner is skipped with a warning, not guessed.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or holds no pair.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AmTICIS directory {root} does not exist")
    split_file = root / "train_val_split.json"
    listed: list[tuple[str, str]] = []
    if split_file.is_file():
        split = json.loads(split_file.read_text())
        coronal = split.get("CORONAL_VIEW", split)
        for subset in subsets:
            listed.extend((subset, name) for name in coronal.get(subset, []))
    else:
        for path in sorted(root.rglob("*_C*_anon.*")):
            listed.append(("", path.name))
    samples = []
    for subset, name in listed:
        fields = parse_name(name)
        if fields["view"] != "C":
            raise ValueError(f"{split_file}: {name!r} is not a coronal (_C) name")
        frontal = _resolve(root, fields["stem"])
        lateral = _resolve(root, fields["stem"].replace("_C", "_S", 1))
        if frontal is None or lateral is None:
            logger.warning("AmTICIS %s: %s view missing, pair skipped", fields["stem"],
                           "coronal" if frontal is None else "sagittal")
            continue
        samples.append(
            MticiSample(
                case_id=fields["stem"].replace("_C", "", 1),
                grade=fields["grade"],
                frontal=frontal,
                lateral=lateral,
                subset=subset,
                info={"suffix": fields["suffix"]},
            )
        )
    if not samples:
        raise FileNotFoundError(f"no AmTICIS pair found under {root}")
    return samples


# ---------------------------------------------------------------------------
# NIfTI (the method's current storage of each run)
# ---------------------------------------------------------------------------

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 128: "u1"}


def read_nifti(path: Path) -> np.ndarray:
    """Voxel array of a single-file NIfTI-1/2 (``.nii`` or ``.nii.gz``), scaled by scl_slope.

    Returns the array in NIfTI index order (i, j, k, …); RGB24 (datatype 128) comes back
    with a trailing channel axis.

    Raises
    ------
    ValueError
        If the file is not NIfTI or uses an unsupported data type.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size in (348, 540):
            break
    else:
        raise ValueError(f"{path}: not a NIfTI file (sizeof_hdr)")
    if size == 348:
        dims = struct.unpack(endian + "8h", raw[40:56])
        datatype = struct.unpack(endian + "h", raw[70:72])[0]
        vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
        slope, inter = struct.unpack(endian + "2f", raw[112:120])
    else:
        dims = struct.unpack(endian + "8q", raw[16:80])
        datatype = struct.unpack(endian + "h", raw[12:14])[0]
        vox_offset = int(struct.unpack(endian + "q", raw[168:176])[0])
        slope, inter = struct.unpack(endian + "2d", raw[176:192])
    if datatype not in _NIFTI_DTYPES:
        raise ValueError(f"{path}: unsupported NIfTI datatype {datatype}")
    shape = tuple(int(d) for d in dims[1 : 1 + dims[0]])
    channels = 3 if datatype == 128 else 1
    dtype = np.dtype(endian + _NIFTI_DTYPES[datatype])
    count = int(np.prod(shape)) * channels
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=max(vox_offset, size))
    # NIfTI stores i fastest (Fortran order); RGB24 interleaves the channels per voxel.
    if channels == 1:
        array = data.reshape(shape, order="F")
    else:
        rgb = data.reshape(-1, 3)
        array = np.stack([rgb[:, c].reshape(shape, order="F") for c in range(3)], axis=-1)
    if slope not in (0.0, 1.0) or inter != 0.0:
        array = array.astype(np.float32) * (slope or 1.0) + inter
    return np.asarray(array)


def write_nifti(path: Path, frames: np.ndarray) -> None:
    """Write (T, H, W) frames as a gzipped NIfTI-1 volume of shape (W, H, T) (the layout
    SimpleITK gives a 2-D+t DSA run), int16 or float32."""
    data = np.asarray(frames).transpose(2, 1, 0)
    code, dtype = (4, "<i2") if np.issubdtype(data.dtype, np.integer) else (16, "<f4")
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *data.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, code, np.dtype(dtype).itemsize * 8)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<2f", header, 112, 1.0, 0.0)
    header[344:348] = b"n+1\x00"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(header) + data.astype(dtype).tobytes(order="F"))


def read_run_clip(path: Path, clip: Sequence[int]) -> np.ndarray:
    """(1, T, H, W) z-scored clip of a run stored as DICOM or NIfTI."""
    name = str(path)
    if name.endswith((".nii.gz", ".nii")):
        volume = read_nifti(path)
        if volume.ndim == 4:  # (W, H, T, 3) RGB → luminance
            volume = volume.mean(axis=-1)
        frames = np.asarray(volume).transpose(2, 1, 0)  # (W, H, T) → (T, H, W)
        return prepare_frames(frames, frames.shape[0], clip)
    return read_dicom_clip(path, clip)


def sample_clips(sample: MticiSample, clip: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Frontal and lateral (1, T, H, W) clips of a sample, from memory or disk."""
    out = []
    for run in (sample.frontal, sample.lateral):
        if isinstance(run, np.ndarray):
            out.append(prepare_frames(run, run.shape[0], clip))
        else:
            out.append(read_run_clip(Path(run), clip))
    return out[0], out[1]
