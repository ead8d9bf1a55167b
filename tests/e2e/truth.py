"""The synthetic ground truth of each module's ``dicomnode synth`` output, and the SR read back.

Where each module keeps its truth:

- ``quality``: ``labels.csv`` beside the runs (``path,contrast,projection,…``);
- ``mtici``: nothing beside the DICOM — the pair of study folder ``<case_id>`` is
  regenerated in-process with ``module.synthetic(n, seed)`` (same n and seed), whose
  samples carry ``case_id`` and ``grade``;
- ``keyframes``: ``keyframes.csv`` (1-based start/apex/end frame numbers per run);
- ``spine``: the Tianchi annotation JSON (``<name>_annotation.json``): integer pixel
  (column, row) = SCOORD − 0.5 on the annotated slice (``instanceUid``).

The readers turn an SR's :class:`~ai.core.contract.Finding` values (through
:func:`dicomnode.results.srread.read_findings`) into the same terms.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ai.core import codes
from ai.core.contract import Code, Finding

# ---------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------


def quality_truth(out: Path) -> dict[str, dict[str, str]]:
    """``labels.csv``: run file name → {label: class}."""
    with open(out / "labels.csv", newline="") as fh:
        return {row.pop("path"): row for row in csv.DictReader(fh)}


def quality_labels(findings: Sequence[Finding]) -> dict[str, str]:
    """{label: class} from the quality SR's qualitative evaluations."""
    by_concept: dict[Code, tuple[str, dict[Code, str]]] = {}
    for name, schema in codes.QUALITY_LABELS.items():
        by_concept[schema.concept] = (name, {code: cls for cls, code in schema.values.items()})
    out: dict[str, str] = {}
    for finding in findings:
        for ev in finding.evaluations:
            if ev.concept in by_concept:
                name, classes = by_concept[ev.concept]
                out[name] = classes[ev.value]
    return out


# ---------------------------------------------------------------------------
# mtici
# ---------------------------------------------------------------------------

#: Grades on the 4-class ordinal scale (0/1, 2a, 2b, 3); 2c joins 2b as in ai.mtici.labels.
MTICI_ORDINAL = {"0": 0, "1": 0, "0/1": 0, "2a": 1, "2b": 2, "2c": 2, "3": 3}


def mtici_truth(n: int, seed: int) -> dict[str, str]:
    """case_id (the study folder ``dicomnode synth mtici`` writes) → true grade."""
    from ai.core.registry import get_module

    return {s.case_id: s.grade for s in get_module("mtici").synthetic(n, seed)}


def mtici_grade(findings: Sequence[Finding]) -> str | None:
    """The grade the mTICI SR states (a class name of ``codes.MTICI_GRADES``)."""
    names = {code: name for name, code in codes.MTICI_GRADES.values.items()}
    for finding in findings:
        for ev in finding.evaluations:
            if ev.concept == codes.MTICI:
                return names[ev.value]
    return None


# ---------------------------------------------------------------------------
# keyframes
# ---------------------------------------------------------------------------


def keyframes_truth(out: Path) -> dict[str, dict[str, int]]:
    """``keyframes.csv``: run file name → {start, apex, end, frames} (1-based)."""
    with open(out / "keyframes.csv", newline="") as fh:
        return {row["path"]: {"start": int(row["start_frame"]), "apex": int(row["apex_frame"]),
                              "end": int(row["end_frame"]), "frames": int(row["number_of_frames"])}
                for row in csv.DictReader(fh)}


def keyframes_found(findings: Sequence[Finding]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{start|apex|end: (frame number, referenced frames)} from the keyframes SR."""
    roles = {code: role for role, code in codes.KEYFRAME_CONCEPTS.items()}
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    for finding in findings:
        for m in finding.measurements:
            if m.concept in roles:
                out[roles[m.concept]] = (int(round(m.value)), m.frame_numbers)
    return out


def kos_frames(kos: Dataset) -> dict[str, list[int]]:
    """Frames a KOS flags, per referenced SOP Instance UID."""
    out: dict[str, list[int]] = {}
    for item in kos.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        ref = item.ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        if frames is None:
            continue
        values = [frames] if isinstance(frames, int | str) else list(frames)
        out.setdefault(str(ref.ReferencedSOPInstanceUID), []).extend(int(f) for f in values)
    return out


# ---------------------------------------------------------------------------
# spine
# ---------------------------------------------------------------------------

SPINE_SITES: dict[Code, str] = {code: ident for ident, code in
                                {**codes.VERTEBRAE, **codes.DISCS}.items()}


def spine_truth(out: Path) -> dict[str, dict[str, Any]]:
    """study UID → {"instance": annotated SOP UID, "points": {ident: (column, row) SCOORD}}."""
    (ann,) = sorted(out.glob("*_annotation.json"))
    truth = {}
    for record in json.loads(ann.read_text()):
        data = record["data"][0]
        points = {p["tag"]["identification"]: (p["coord"][0] + 0.5, p["coord"][1] + 0.5)
                  for p in data["annotation"][0]["data"]["point"]}
        truth[record["studyUid"]] = {"instance": data["instanceUid"], "points": points}
    return truth


def patient_xyz(header: Dataset, column: float, row: float) -> np.ndarray:
    """Patient coordinates (mm) of an SCOORD point (PS3.3 C.7.6.2.1.1; pixel centres at +0.5)."""
    iop = np.array([float(v) for v in header.ImageOrientationPatient])
    ipp = np.array([float(v) for v in header.ImagePositionPatient])
    row_spacing, col_spacing = (float(v) for v in header.PixelSpacing)
    return (ipp + iop[:3] * col_spacing * (column - 0.5)
            + iop[3:] * row_spacing * (row - 0.5))


def spine_points(findings: Sequence[Finding]) -> dict[str, tuple[str, float, float]]:
    """{identification: (SOP Instance UID of the slice, column, row)} from the spine SR."""
    out = {}
    for finding in findings:
        if finding.point is None or finding.finding_site not in SPINE_SITES:
            continue
        out[SPINE_SITES[finding.finding_site]] = (finding.references[0].sop_instance_uid,
                                                  finding.point.column, finding.point.row)
    return out
