"""Study views from DICOM files on disk (``dicomnode evaluate``, tests, the CLI).

The node builds :class:`~ai.core.contract.StudyView` objects from its index; this
builds the same from a set of files, reading headers only (no Pixel Data).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ai.core.contract import InstanceView, SeriesView, StudyView

#: VRs whose values are bytes or nested datasets: left out of ``attributes``.
_SKIP_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"}


def plain_attributes(ds: pydicom.Dataset) -> dict[str, Any]:
    """Top-level header values by keyword as plain Python values (no bytes, no sequences)."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.VR in _SKIP_VRS or not elem.keyword or elem.tag.group == 0x7FE0:
            continue
        out[elem.keyword] = _plain(elem.value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.DSdecimal):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, str | int | float) or value is None:
        return value
    return str(value)


def _image_type(attrs: dict[str, Any]) -> tuple[str, ...]:
    value = attrs.get("ImageType", ())
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(str(v).upper() for v in value)


def study_views_from_files(paths: Iterable[Path | str]) -> list[StudyView]:
    """Group DICOM files into study views (studies and series in first-seen order)."""
    studies: dict[str, dict[str, list[tuple[InstanceView, dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    study_attrs: dict[str, dict[str, Any]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        attrs = plain_attributes(ds)
        inst = InstanceView(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            path=Path(path),
            instance_number=attrs.get("InstanceNumber"),
            number_of_frames=int(attrs.get("NumberOfFrames") or 1),
            attributes=attrs,
        )
        study_uid = str(ds.StudyInstanceUID)
        studies[study_uid][str(ds.SeriesInstanceUID)].append((inst, attrs))
        study_attrs.setdefault(study_uid, attrs)
    views = []
    for study_uid, series in studies.items():
        series_views = []
        for series_uid, items in series.items():
            items.sort(key=lambda it: (it[0].instance_number or 0, it[0].sop_instance_uid))
            first = items[0][1]
            series_views.append(SeriesView(
                series_instance_uid=series_uid,
                modality=str(first.get("Modality", "")),
                instances=tuple(it[0] for it in items),
                series_description=str(first.get("SeriesDescription", "")),
                body_part_examined=str(first.get("BodyPartExamined", "")),
                image_type=_image_type(first),
                series_number=first.get("SeriesNumber"),
                attributes=first,
            ))
        views.append(StudyView(study_instance_uid=study_uid, series=tuple(series_views),
                               attributes=study_attrs[study_uid]))
    return views
