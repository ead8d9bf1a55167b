"""What routing rules can match on: per-series and per-study facts read from the index.

Facts are the indexed attributes (``Series`` columns, instance counts and sizes) plus
two derived ones that DICOM does not state directly:

``orientation``
    ``SAGITTAL``, ``CORONAL`` or ``AXIAL`` when the slice normal (row cosine ×
    column cosine of ImageOrientationPatient) is within the 0.75 component threshold
    of one patient axis (modules.md, spine), else ``OBLIQUE``; absent without IOP.
``view``
    For XA: ``FRONTAL`` when |PositionerPrimaryAngle| < 45°, else ``LATERAL``
    (modules.md, mtici); absent without the angle.

Result series the node wrote itself (``Series.is_result``) are never facts: no rule
routes the node's own output back into a module.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.storage.models import Instance, Series, Study

#: Attributes a series-level condition may name.
SERIES_ATTRIBUTES = (
    "modality", "series_description", "body_part_examined", "image_type", "view_position",
    "image_laterality", "positioner_primary_angle", "positioner_secondary_angle", "view",
    "orientation", "calling_ae", "series_number", "sop_class_uid", "number_of_frames",
    "instance_count", "rows", "columns", "manufacturer", "study_description",
)
#: Attributes a study-level condition may name.
STUDY_ATTRIBUTES = (
    "study_description", "modalities", "series_count", "calling_ae", "accession_number",
)

#: |cosine| a slice normal needs along one axis to count as that plane (modules.md, spine).
PLANE_THRESHOLD = 0.75
#: |PositionerPrimaryAngle| from which an XA run is lateral (modules.md, mtici).
LATERAL_ANGLE = 45.0


def orientation(iop: Sequence[float] | str | None) -> str:
    """Acquisition plane from ImageOrientationPatient (six direction cosines)."""
    if isinstance(iop, str):
        parts = [p for p in iop.replace(",", "\\").split("\\") if p.strip()]
        try:
            iop = [float(p) for p in parts]
        except ValueError:
            return ""
    if not iop or len(iop) != 6:
        return ""
    r, c = iop[:3], iop[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    axis = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[axis]) < PLANE_THRESHOLD:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


def xa_view(modality: str, primary_angle: float | None) -> str:
    """``FRONTAL`` or ``LATERAL`` for an XA run with a positioner angle, else ``""``."""
    if modality.upper() != "XA" or primary_angle is None:
        return ""
    return "LATERAL" if abs(primary_angle) >= LATERAL_ANGLE else "FRONTAL"


@dataclass(frozen=True)
class SeriesFacts:
    """One series' facts, keyed by the names in :data:`SERIES_ATTRIBUTES`."""

    series_instance_uid: str
    values: Mapping[str, Any]

    def label(self) -> str:
        """``#3 XA 'DSA lat'`` — how explain tables name a series."""
        number = self.values.get("series_number")
        desc = self.values.get("series_description") or ""
        return f"#{number if number is not None else '?'} {self.values.get('modality', '')} {desc!r}"


@dataclass(frozen=True)
class StudyFacts:
    """A study's facts and those of its (non-result) series."""

    study_instance_uid: str
    values: Mapping[str, Any]
    series: tuple[SeriesFacts, ...]


def study_facts(session: Session, study: Study) -> StudyFacts:
    """Facts of ``study`` and each of its acquired series, from a few grouped queries."""
    series_rows = session.scalars(
        select(Series).where(Series.study_fk == study.id, Series.is_result.is_(False))
        .order_by(Series.series_number, Series.id)
    ).all()
    ids = [s.id for s in series_rows]
    stats: dict[int, tuple[int, int, int | None, int | None, int]] = {}
    if ids:
        for fk, n, frames, rows, cols, first_id in session.execute(
            select(Instance.series_fk, func.count(Instance.id), func.max(Instance.number_of_frames),
                   func.max(Instance.rows), func.max(Instance.columns), func.min(Instance.id))
            .where(Instance.series_fk.in_(ids)).group_by(Instance.series_fk)
        ):
            stats[fk] = (int(n), int(frames or 1), rows, cols, first_id)
    firsts = {i.series_fk: i for i in session.scalars(
        select(Instance).where(Instance.id.in_([s[4] for s in stats.values()])))} if stats else {}

    out = []
    for s in series_rows:
        n, frames, rows, cols, _ = stats.get(s.id, (0, 0, None, None, 0))
        first: Instance | None = firsts.get(s.id)
        attrs = first.attributes if first is not None else {}
        iop: Any = s.image_orientation_patient or attrs.get("ImageOrientationPatient")
        out.append(SeriesFacts(s.series_instance_uid, {
            "modality": s.modality,
            "series_description": s.series_description,
            "body_part_examined": s.body_part_examined,
            "image_type": [v for v in s.image_type.split("\\") if v] if s.image_type else [],
            "view_position": s.view_position,
            "image_laterality": s.image_laterality,
            "positioner_primary_angle": s.positioner_primary_angle,
            "positioner_secondary_angle": s.positioner_secondary_angle,
            "view": xa_view(s.modality, s.positioner_primary_angle),
            "orientation": orientation(iop),
            "calling_ae": s.calling_ae,
            "series_number": s.series_number,
            "sop_class_uid": first.sop_class_uid if first is not None else "",
            "number_of_frames": frames,
            "instance_count": n,
            "rows": rows,
            "columns": cols,
            "manufacturer": attrs.get("Manufacturer", ""),
            "study_description": study.study_description,
        }))
    values = {
        "study_description": study.study_description,
        "modalities": sorted({s.values["modality"] for s in out if s.values["modality"]}),
        "series_count": len(out),
        "calling_ae": next((s.values["calling_ae"] for s in out if s.values["calling_ae"]), ""),
        "accession_number": study.accession_number,
    }
    return StudyFacts(study.study_instance_uid, values, tuple(out))
