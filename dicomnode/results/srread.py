"""Reading back the SRs :mod:`dicomnode.results.sr` writes: their findings, as the module gave them.

:func:`read_findings` goes through highdicom's TID 1500 classes (what
``highdicom.sr.srread`` returns) and gives :class:`~ai.core.contract.Finding` values;
:func:`canonical` is what a finding looks like after the round trip (a single
item's confidence moved to its group, confidences at the document's precision), so
tests and ``dicomnode jobs show`` compare like with like.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from ai.core.contract import Evaluation, Finding, ImageReference, Measurement, Point
from dicomnode.results.codes import code_of, codes
from dicomnode.results.sr import SR_CLASSES, group_confidence, percent

_CERTAINTY = codes.CERTAINTY_OF_FINDING
#: CONTAINS CODE rows of TID 1501/1410 that are not qualitative evaluations.
_STRUCTURAL_CODES = frozenset({codes.FINDING, codes.GEOMETRIC_PURPOSE_OF_REGION})


def _item_confidence(item: Dataset) -> float | None:
    for child in item.get("ContentSequence", []):
        if (child.ValueType == "NUM" and child.RelationshipType == "HAS PROPERTIES"
                and code_of(child.ConceptNameCodeSequence[0]) == _CERTAINTY):
            return float(child.MeasuredValueSequence[0].NumericValue) / 100.0
    return None


def _image_refs(item: Dataset) -> list[ImageReference]:
    out = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE" and child.RelationshipType in ("INFERRED FROM", "SELECTED FROM",
                                                                     "CONTAINS"):
            ref = child.ReferencedSOPSequence[0]
            frames = ref.get("ReferencedFrameNumber")
            frames = () if frames is None else tuple(int(f) for f in
                                                     (frames if isinstance(frames, Sequence) and not
                                                      isinstance(frames, str) else [frames]))
            out.append(ImageReference(str(ref.ReferencedSOPInstanceUID),
                                      str(ref.ReferencedSOPClassUID), frames))
    return out


def _measurement_frames(m: hd.sr.Measurement) -> tuple[int, ...]:
    """The frames a NUM was read off, on its first source image.

    Point groups name them on an INFERRED FROM IMAGE; image-level groups on the
    SELECTED FROM image of whole-frame SCOORDs, one SCOORD per frame (sr._whole_frame).
    """
    refs = m.referenced_images
    if refs:
        return tuple(int(f) for f in (refs[0].referenced_frame_numbers or ()))
    frames: list[int] = []
    first: str | None = None
    for region in m.referenced_coordinates or ():
        for image in _image_refs(region):
            first = first or image.sop_instance_uid
            if image.sop_instance_uid == first:
                frames.extend(image.frame_numbers)
    return tuple(frames)


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR tree, depth first in document order."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def _tracking_uids(sr: Dataset) -> list[str]:
    """Tracking Unique Identifiers (112040) in document order."""
    return [str(item.UID) for item in content_items(sr) if item.get("ValueType") == "UIDREF"
            and item.ConceptNameCodeSequence[0].CodeValue == "112040"]


def read_findings(sr: Dataset) -> list[Finding]:
    """The findings of an SR this module wrote, through ``highdicom.sr.srread`` types.

    Confidences come back from Certainty of Finding: the group's as
    :attr:`Finding.confidence`, an item's own as its ``confidence``.
    """
    report = getattr(sr, "content", None)
    if not isinstance(report, hd.sr.MeasurementReport):
        # A document just built holds a generic ContentSequence; srread's has the template.
        sr_class = SR_CLASSES.get(str(sr.SOPClassUID))
        if sr_class is None:
            raise ValueError(f"SR {sr.SOPInstanceUID}: SOP Class {sr.SOPClassUID} is not one we write")
        report = sr_class.from_dataset(sr).content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError(f"SR {sr.SOPInstanceUID} is not a TID 1500 Imaging Measurement Report")
    out: list[Finding] = []
    groups = [*report.get_image_measurement_groups(), *report.get_planar_roi_measurement_groups()]
    # highdicom returns 1501 groups, then 1410 ones; the document order is the findings'.
    order = {uid: i for i, uid in enumerate(_tracking_uids(sr))}
    groups.sort(key=lambda g: order.get(str(g.tracking_uid), len(order)))
    for group in groups:
        root = group[0]
        confidence = None
        measurements = []
        for m in group.get_measurements():
            name = code_of(m.name)
            if name == _CERTAINTY:
                confidence = float(m.value) / 100.0
                continue
            measurements.append(Measurement(name, float(m.value), code_of(m.unit), None,
                                            _measurement_frames(m)))
        # highdicom rebuilds QualitativeEvaluation items without their children, so the
        # CODE items are read from the group itself, less the template's own rows.
        evaluations = [
            Evaluation(code_of(item.ConceptNameCodeSequence[0]),
                       code_of(item.ConceptCodeSequence[0]), _item_confidence(item))
            for item in root.ContentSequence
            if item.ValueType == "CODE" and item.RelationshipType == "CONTAINS"
            and code_of(item.ConceptNameCodeSequence[0]) not in _STRUCTURAL_CODES
        ]
        point = None
        if isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
            region = group.roi
            assert region is not None
            col, row = (float(v) for v in region.value[0])
            point = Point(col, row)
            references = [_image_refs(item)[0] for item in root.ContentSequence
                          if item.ValueType == "SCOORD"]
        else:
            assert isinstance(group, hd.sr.MeasurementsAndQualitativeEvaluations)
            references = [ImageReference(str(s.referenced_sop_instance_uid),
                                         str(s.referenced_sop_class_uid),
                                         tuple(int(f) for f in (s.referenced_frame_numbers or ())))
                          for s in group.source_images]
        sites = group.finding_sites
        if group.finding_type is None:
            raise ValueError(f"SR {sr.SOPInstanceUID}: a measurement group has no Finding")
        out.append(Finding(
            tracking_id=str(group.tracking_identifier),
            finding=code_of(group.finding_type),
            references=tuple(references),
            evaluations=tuple(evaluations),
            measurements=tuple(measurements),
            confidence=confidence,
            finding_site=code_of(sites[0].value) if sites else None,
            point=point,
        ))
    return out


def canonical(finding: Finding) -> Finding:
    """``finding`` as an SR states it: what :func:`read_findings` gives back.

    A single confident item's confidence moves to the group; confidences are kept
    to the 0.001 % the document holds; patient coordinates are not encoded (the 2D
    SCOORD is on the image).
    """
    group, per_item = group_confidence(finding)

    def _c(value: float | None) -> float | None:
        return None if value is None else percent(value) / 100.0

    return Finding(
        tracking_id=finding.tracking_id,
        finding=finding.finding,
        references=finding.references,
        evaluations=tuple(Evaluation(e.concept, e.value, _c(e.confidence) if per_item else None)
                          for e in finding.evaluations),
        measurements=tuple(Measurement(m.concept, float(m.value), m.unit, None, m.frame_numbers)
                           for m in finding.measurements),
        confidence=_c(group),
        finding_site=finding.finding_site,
        point=None if finding.point is None else Point(finding.point.column, finding.point.row),
    )
