"""The sample type, DICOM slice reading and the Tianchi 2020 spinal challenge format.

Tianchi layout (methods-notes §3.5, dataId 79463)::

    lumbar_train150/
        study0/image0.dcm image1.dcm …      every series of one study, flat
        study1/…
    lumbar_train150_annotation.json         list of studies

Each annotation item: ``studyUid``; ``data[0].seriesUid``/``instanceUid`` (the annotated
slice); ``data[0].annotation[0].data.point[*]`` with ``coord`` = [x (column), y (row)] in
integer pixels of that slice, ``tag.identification`` (``"L1"`` … ``"L5-S1"``),
``tag.vertebra`` or ``tag.disc`` (``"v1"`` … ``"v5"``, comma-joined) and ``zIndex``.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from ai.spine.geometry import slice_positions
from ai.spine.labels import (
    IDENTIFICATIONS,
    N_LANDMARKS,
    disc_morphology,
    has_schmorl_node,
    is_abnormal,
    is_disc,
)

logger = logging.getLogger(__name__)

#: Slices kept on each side of the annotated one (CCF-Net jitters the key slice by ±1
#: in training and stacks its neighbours, so ±2 covers every slice it can touch).
CONTEXT = 2


@dataclass
class SpineSample:
    """One sagittal T2 series (around its key slice) with its 11 landmarks.

    Parameters
    ----------
    study_instance_uid, series_instance_uid : str
        Identity of the annotated series.
    slices : numpy.ndarray
        (S, H, W) stored pixel values, ordered by position along the slice normal.
    key_index : int
        Index in ``slices`` of the annotated (middle) slice.
    pixel_spacing : tuple of 2 float
        ``PixelSpacing`` (row spacing, column spacing) in mm.
    coords : numpy.ndarray
        (11, 2) landmark (column, row) on the key slice in SCOORD pixel coordinates (the
        centre of pixel (i, j) is (i + 0.5, j + 0.5)); NaN where a landmark is missing.
    tags : tuple of 11 str
        Tianchi tag strings (``"v1"``, ``"v3,v5"`` …) in :data:`IDENTIFICATIONS` order;
        empty where missing.
    sop_instance_uids : tuple of str
        SOP Instance UID of each slice in ``slices`` (may be empty for in-memory data).
    positions : numpy.ndarray, optional
        (S, 3) ``ImagePositionPatient`` of each slice.
    orientation : tuple of 6 float, optional
        ``ImageOrientationPatient`` of the series.
    """

    study_instance_uid: str
    series_instance_uid: str
    slices: np.ndarray
    key_index: int
    pixel_spacing: tuple[float, float]
    coords: np.ndarray
    tags: tuple[str, ...]
    sop_instance_uids: tuple[str, ...] = ()
    positions: np.ndarray | None = None
    orientation: tuple[float, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coords.shape != (N_LANDMARKS, 2):
            raise ValueError(f"coords must be ({N_LANDMARKS}, 2), got {self.coords.shape}")
        if len(self.tags) != N_LANDMARKS:
            raise ValueError(f"tags must have {N_LANDMARKS} entries, got {len(self.tags)}")
        if not 0 <= self.key_index < len(self.slices):
            raise ValueError(f"key_index {self.key_index} outside 0..{len(self.slices) - 1}")

    @property
    def key_sop_instance_uid(self) -> str:
        """SOP Instance UID of the annotated slice ('' when unknown)."""
        return self.sop_instance_uids[self.key_index] if self.sop_instance_uids else ""

    def labels(self) -> np.ndarray:
        """(11,) binary class per landmark (1 = abnormal), -1 where missing."""
        return np.array([(int(is_abnormal(t)) if t else -1) for t in self.tags], dtype=np.int64)

    def disc_grades(self) -> np.ndarray:
        """(6,) disc morphology index (0 = v1 … 3 = v4), -1 where none."""
        return np.array([disc_morphology(t) if t else -1
                         for i, t in enumerate(self.tags) if is_disc(i)], dtype=np.int64)

    def schmorl(self) -> np.ndarray:
        """(6,) 1 where a disc carries v5."""
        return np.array([int(has_schmorl_node(t)) if t else 0
                         for i, t in enumerate(self.tags) if is_disc(i)], dtype=np.int64)


# ---------------------------------------------------------------------------
# Reading slices.
# ---------------------------------------------------------------------------


def read_slice(ds_or_path: pydicom.Dataset | Path | str) -> np.ndarray:
    """Pixels of one MR slice as float32, rescaled and with MONOCHROME1 inverted."""
    ds = ds_or_path if isinstance(ds_or_path, pydicom.Dataset) else pydicom.dcmread(ds_or_path)
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3:  # a multi-frame file: take its first frame
        arr = arr[0]
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def order_by_position(headers: Sequence[pydicom.Dataset]) -> list[int]:
    """Indices of ``headers`` sorted along the slice normal (InstanceNumber as fallback)."""
    try:
        iop = headers[0].ImageOrientationPatient
        keys = slice_positions([h.ImagePositionPatient for h in headers], iop)
        return [int(i) for i in np.argsort(keys, kind="stable")]
    except (AttributeError, ValueError, IndexError):
        return sorted(range(len(headers)), key=lambda i: int(headers[i].get("InstanceNumber", 0)))


def stack_slices(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack slices of one series; a slice of another size is resized to the first's."""
    shape = arrays[0].shape
    out = []
    for a in arrays:
        if a.shape != shape:
            from PIL import Image

            a = np.asarray(Image.fromarray(a).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        out.append(a)
    return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------------------
# Tianchi annotation JSON.
# ---------------------------------------------------------------------------


def tianchi_record(sample: SpineSample, coords: np.ndarray | None = None,
                   tags: Sequence[str] | None = None) -> dict[str, Any]:
    """One annotation item in the Tianchi schema (for ``sample`` or a prediction on it).

    Coordinates are written as integer pixel indices (column, row), as the challenge's
    files hold them: SCOORD − 0.5, rounded.
    """
    coords = sample.coords if coords is None else coords
    tags = sample.tags if tags is None else tags
    points = []
    for i, ident in enumerate(IDENTIFICATIONS):
        if not np.all(np.isfinite(coords[i])) or not tags[i]:
            continue
        kind = "disc" if is_disc(i) else "vertebra"
        points.append({
            "coord": [int(round(float(coords[i, 0]) - 0.5)), int(round(float(coords[i, 1]) - 0.5))],
            "tag": {"identification": ident, kind: tags[i]},
            "zIndex": int(sample.key_index if "z_index" not in sample.info
                          else sample.info["z_index"]),
        })
    return {
        "studyUid": sample.study_instance_uid,
        "data": [{
            "seriesUid": sample.series_instance_uid,
            "instanceUid": sample.key_sop_instance_uid,
            "annotation": [{"data": {"point": points}}],
        }],
    }


def find_annotation(path: Path) -> tuple[Path, Path]:
    """(studies directory, annotation JSON) for a Tianchi folder or annotation file.

    Accepts ``lumbar_train150/`` (with ``lumbar_train150_annotation.json`` beside or
    inside it) or the JSON file itself (studies in the sibling folder of its stem).

    Raises
    ------
    FileNotFoundError
        No annotation JSON is found.
    """
    path = Path(path)
    if path.is_file():
        stem = path.name.removesuffix(".json").removesuffix("_annotation")
        studies = path.parent / stem
        return (studies if studies.is_dir() else path.parent), path
    beside = path.parent / f"{path.name}_annotation.json"
    if beside.is_file():
        return path, beside
    inside = sorted(path.glob("*annotation*.json"))
    if inside:
        return path, inside[0]
    raise FileNotFoundError(f"no Tianchi annotation JSON for {path} "
                            f"(looked for {beside.name} beside it and *annotation*.json in it)")


def _index_headers(studies_dir: Path) -> dict[tuple[str, str], list[tuple[Path, pydicom.Dataset]]]:
    """(study UID, series UID) → [(path, header)] of every ``study*/*.dcm``."""
    index: dict[tuple[str, str], list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(studies_dir.glob("*/*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            index[(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))].append((path, ds))
        except Exception as exc:  # the challenge data holds a few unreadable files
            logger.warning("skipping %s: %s", path, exc)
    return index


def load_tianchi(path: Path | str, context: int = CONTEXT) -> list[SpineSample]:
    """Samples from a Tianchi folder: the annotated series around its annotated slice.

    Parameters
    ----------
    path : Path
        A Tianchi study folder or its annotation JSON (see :func:`find_annotation`).
    context : int
        Slices kept on each side of the annotated slice.

    Returns
    -------
    list of SpineSample
        One per annotation item whose series and instance are found; items whose files
        are missing are skipped with a warning.  ``info["z_index"]`` keeps the JSON's
        ``zIndex``; ``info["paths"]`` the files of the kept slices.
    """
    studies_dir, ann_path = find_annotation(Path(path))
    annotations = json.loads(ann_path.read_text())
    index = _index_headers(studies_dir)
    samples = []
    for item in annotations:
        study_uid = str(item["studyUid"])
        data = item["data"][0]
        series_uid, instance_uid = str(data["seriesUid"]), str(data["instanceUid"])
        files = index.get((study_uid, series_uid))
        if not files:
            logger.warning("study %s: series %s not found under %s", study_uid, series_uid,
                           studies_dir)
            continue
        order = order_by_position([h for _, h in files])
        files = [files[i] for i in order]
        uids = [str(h.SOPInstanceUID) for _, h in files]
        if instance_uid not in uids:
            logger.warning("study %s: instance %s not in series %s", study_uid, instance_uid,
                           series_uid)
            continue
        key = uids.index(instance_uid)
        lo, hi = max(0, key - context), min(len(files), key + context + 1)
        kept = files[lo:hi]
        arrays = [read_slice(p) for p, _ in kept]
        coords = np.full((N_LANDMARKS, 2), np.nan)
        tags = [""] * N_LANDMARKS
        z_index = key
        for point in data["annotation"][0]["data"]["point"]:
            ident = point["tag"].get("identification")
            if ident not in IDENTIFICATIONS:
                continue  # CCF-Net ignores e.g. T11-T12
            i = IDENTIFICATIONS.index(ident)
            # Integer pixel indices in the file → SCOORD (pixel centres at +0.5).
            coords[i] = [float(point["coord"][0]) + 0.5, float(point["coord"][1]) + 0.5]
            tag = point["tag"].get("disc" if is_disc(i) else "vertebra", "") or "v1"
            tags[i] = str(tag)
            z_index = int(point.get("zIndex", z_index))
        header = kept[key - lo][1]
        spacing = tuple(float(v) for v in header.get("PixelSpacing", (1.0, 1.0)))
        samples.append(SpineSample(
            study_instance_uid=study_uid, series_instance_uid=series_uid,
            slices=stack_slices(arrays), key_index=key - lo,
            pixel_spacing=(spacing[0], spacing[1]), coords=coords, tags=tuple(tags),
            sop_instance_uids=tuple(uids[lo:hi]),
            positions=_positions([h for _, h in kept]),
            orientation=_orientation(header),
            info={"z_index": z_index, "paths": [str(p) for p, _ in kept]},
        ))
    logger.info("read %d of %d annotated studies from %s", len(samples), len(annotations),
                ann_path)
    return samples


def _positions(headers: Iterable[pydicom.Dataset]) -> np.ndarray | None:
    try:
        return np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except AttributeError:
        return None


def _orientation(header: pydicom.Dataset) -> tuple[float, ...] | None:
    iop = header.get("ImageOrientationPatient")
    return tuple(float(v) for v in iop) if iop is not None else None
