"""Which two runs of a study ``mtici`` grades: a frontal and a lateral DSA run.

A run is an XA (or Enhanced XA) multi-frame instance; frontal when
|PositionerPrimaryAngle| < 45°, lateral otherwise (PS3.3 C.8.7.5: the primary angle
is the LAO/RAO rotation, 0° = AP, ±90° = lateral).  Subtracted runs only, by default
(ImageType SUBTRACTION, RecommendedViewingMode SUB, or a MaskSubtractionSequence).
Runs that ``quality`` rated unsuitable are skipped (its Findings carry
``gate={"suitable": False}`` and reference the run).  Of the frontal/lateral pairs
acquired within ``pair_window_s`` of each other (a biplane pair is seconds apart), the
latest is taken (the final post-treatment result), or the earliest if configured.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom

from ai.core.contract import Case, Findings, InstanceView, Selection, SeriesView, StudyView

logger = logging.getLogger(__name__)

XA_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
    "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage (retired)
})

#: Header keywords selection reads; fetched from the file when the index lacks them.
KEYWORDS = (
    "PositionerPrimaryAngle", "ImageType", "RecommendedViewingMode", "MaskSubtractionSequence",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
    "SeriesDate", "SeriesTime", "NumberOfFrames",
)


@dataclass(frozen=True)
class SelectionConfig:
    """How runs are chosen (``[modules.mtici]`` settings).

    Parameters
    ----------
    pick : {"latest", "earliest"}
        Which pair to grade when several were acquired (latest = after treatment).
    pair_window_s : float
        Largest acquisition-time gap between the two runs of one pair.
    lateral_threshold_deg : float
        |PositionerPrimaryAngle| at or above which a run is lateral.
    require_subtracted : bool
        Skip runs not marked as subtracted.
    skip_unsuitable : bool
        Skip runs the ``quality`` module gated as unsuitable.
    """

    pick: str = "latest"
    pair_window_s: float = 300.0
    lateral_threshold_deg: float = 45.0
    require_subtracted: bool = True
    skip_unsuitable: bool = True

    def __post_init__(self) -> None:
        if self.pick not in ("latest", "earliest"):
            raise ValueError(f"mtici selection: pick must be 'latest' or 'earliest', not {self.pick!r}")


@dataclass(frozen=True)
class _Run:
    instance: InstanceView
    series: SeriesView
    angle: float
    when: datetime | None
    order: tuple[int, int]


def _header(instance: InstanceView, series: SeriesView) -> dict[str, Any]:
    """Attributes from the index, completed from the file header where missing."""
    values: dict[str, Any] = {**dict(series.attributes), **dict(instance.attributes)}
    if "PositionerPrimaryAngle" not in values and Path(instance.path).is_file():
        ds = pydicom.dcmread(instance.path, stop_before_pixels=True, specific_tags=list(KEYWORDS))
        for key in KEYWORDS:
            if key in ds and key not in values:
                values[key] = ds[key].value
    return values


def _datetime(values: Mapping[str, Any]) -> datetime | None:
    """Acquisition time, falling back to content then series time."""
    candidates = [str(values.get("AcquisitionDateTime") or "")]
    for day, clock in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                       ("SeriesDate", "SeriesTime")):
        if values.get(day) and values.get(clock):
            candidates.append(f"{values[day]}{values[clock]}")
    for text in candidates:
        digits = text.split("+")[0].split("-")[0]
        digits = digits.split(".")[0]
        if len(digits) >= 12:
            try:
                return datetime.strptime(digits[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
            except ValueError:
                continue
    return None


def _is_subtracted(values: Mapping[str, Any], series: SeriesView) -> bool:
    image_type = values.get("ImageType") or series.image_type or ()
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return (
        "SUBTRACTION" in {str(v).upper() for v in image_type}
        or str(values.get("RecommendedViewingMode", "")).upper() == "SUB"
        or bool(values.get("MaskSubtractionSequence"))
    )


def unsuitable_instances(prior: Mapping[str, Sequence[Findings]] | None) -> set[str]:
    """SOP Instance UIDs that ``quality`` gated as unsuitable."""
    out: set[str] = set()
    for findings in (prior or {}).get("quality", ()):
        if findings.gate.get("suitable", True) is False:
            for finding in findings.findings:
                out.update(ref.sop_instance_uid for ref in finding.references)
    return out


def select_pair(
    study: StudyView,
    config: SelectionConfig,
    prior: Mapping[str, Sequence[Findings]] | None = None,
) -> Selection:
    """The frontal + lateral case of ``study``, or no case and the reason."""
    unsuitable = unsuitable_instances(prior) if config.skip_unsuitable else set()
    frontal: list[_Run] = []
    lateral: list[_Run] = []
    skipped: list[str] = []
    n_xa = 0
    for series in study.series:
        for inst in series.instances:
            if inst.sop_class_uid not in XA_CLASSES or inst.number_of_frames < 2:
                continue
            n_xa += 1
            values = _header(inst, series)
            if config.require_subtracted and not _is_subtracted(values, series):
                skipped.append(f"{inst.sop_instance_uid}: not a subtracted run")
                continue
            if inst.sop_instance_uid in unsuitable:
                skipped.append(f"{inst.sop_instance_uid}: rated unsuitable by quality")
                continue
            if values.get("PositionerPrimaryAngle") in (None, ""):
                skipped.append(f"{inst.sop_instance_uid}: no PositionerPrimaryAngle")
                continue
            angle = float(values["PositionerPrimaryAngle"])
            run = _Run(inst, series, angle, _datetime(values),
                       (series.series_number or 0, inst.instance_number or 0))
            (lateral if abs(angle) >= config.lateral_threshold_deg else frontal).append(run)
    if not frontal or not lateral:
        missing = " and ".join(
            name for name, runs in (("frontal", frontal), ("lateral", lateral)) if not runs
        )
        reason = (f"no {missing} DSA run (|PositionerPrimaryAngle| "
                  f"{'<' if missing == 'frontal' else '>='} {config.lateral_threshold_deg:g}°) "
                  f"among {n_xa} multi-frame XA run(s)")
        if missing == "frontal and lateral":
            reason = f"no frontal and no lateral DSA run among {n_xa} multi-frame XA run(s)"
        if skipped:
            reason += "; skipped: " + "; ".join(skipped)
        return Selection(cases=(), reason=reason)
    pairs = []
    for f in frontal:
        for s in lateral:
            if f.when is not None and s.when is not None:
                gap = abs((f.when - s.when).total_seconds())
                if gap > config.pair_window_s:
                    continue
                key: tuple[Any, ...] = (max(f.when, s.when).timestamp(), -gap)
            else:
                key = (float(max(f.order, s.order)[0]), float(max(f.order, s.order)[1]))
            pairs.append((key, f, s))
    if not pairs:
        return Selection(cases=(), reason=(
            f"no frontal and lateral run acquired within {config.pair_window_s:g} s of each other"))
    pairs.sort(key=lambda p: p[0], reverse=config.pick == "latest")
    _, f, s = pairs[0]
    case = Case(
        module="mtici",
        study_instance_uid=study.study_instance_uid,
        inputs=(f.instance, s.instance),
        series=(f.series, s.series),
        info={
            "frontal_sop_instance_uid": f.instance.sop_instance_uid,
            "lateral_sop_instance_uid": s.instance.sop_instance_uid,
            "frontal_angle": f.angle,
            "lateral_angle": s.angle,
            "pairs_available": len(pairs),
            "skipped": skipped,
        },
    )
    return Selection(cases=(case,))
