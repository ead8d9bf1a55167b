"""TID 1500 Imaging Measurement Reports from a module's findings (highdicom).

One document per result type (results-notes §1.2): image-level findings become
TID 1501 groups in one SR, point landmarks TID 1410 SCOORD POINT groups in another,
because PixelMed's validator checks every group of a container as TID 1410 when
exactly one SCOORD group sits beside 1501 groups (E4).

Per finding, one measurement group::

    Tracking Identifier (readable text, viewers show it) + Tracking Unique Identifier
    Finding [+ Finding Site]
    Algorithm Name / Version / Parameters ("sha256=…")           TID 4019
    NUM Certainty of Finding (%)          └ INFERRED FROM IMAGE (source, frames)
    NUM per measurement (UCUM)            └ INFERRED FROM IMAGE (source, its frames)
    CODE per evaluation                   [└ HAS PROPERTIES NUM certainty]
    1501: IMAGE Source of Measurement (frames)   1410: SCOORD POINT └ SELECTED FROM IMAGE

The group's Certainty of Finding is :attr:`Finding.confidence`, or the confidence of
its one confident evaluation or measurement.  When several evaluations carry their
own (a multi-label disc), each CODE item gets a HAS PROPERTIES NUM certainty child
(PixelMed 2022 only warns: the evaluation rows are not in its templates anyway, W2).
A NUM cannot carry one: TID 300 allows only INFERRED FROM NUM children and PixelMed
reports HAS PROPERTIES there as an error.  So measurement confidences reach the SR
only as the group's certainty: with :attr:`Finding.confidence` set (the keyframes
module gives the lowest of its three) they stay in the index's findings JSON; with
none set and several confident measurements :func:`build_sr` raises rather than
pick one.  :func:`dicomnode.results.srread.read_findings` reads it all back.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from ai.core.contract import (
    Finding,
    Findings,
    ImageReference,
)
from dicomnode.results.codes import codes, coding_scheme_items, concept, private_schemes_in
from dicomnode.results.device import Device, Placement
from dicomnode.results.sources import SourceIndex, library_entry

#: The two SR storage classes the node writes; Comprehensive SR (88.33) by default,
#: because Stone Web Viewer draws overlays only for it (results-notes §1.1).
SR_SOP_CLASSES = {
    "comprehensive": ComprehensiveSRStorage,
    "comprehensive3d": Comprehensive3DSRStorage,
}

SR_CLASSES: dict[str, type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR]] = {
    ComprehensiveSRStorage: hd.sr.ComprehensiveSR,
    Comprehensive3DSRStorage: hd.sr.Comprehensive3DSR,
}


def percent(confidence: float) -> float:
    """A confidence in [0, 1] as the SR's percentage (0.001 % precision)."""
    value = float(confidence)  # numpy scalars from a module are welcome too
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"confidence {confidence} outside [0, 1]")
    return round(value * 100.0, 3)


def _certainty(value: float, refs: Sequence[ImageReference]) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=concept(codes.CERTAINTY_OF_FINDING),
        value=percent(value),
        unit=concept(codes.PERCENT),
        referenced_images=[_measurement_source(r, r.frame_numbers) for r in refs],
    )


def _measurement_source(ref: ImageReference, frames: Sequence[int]) -> hd.sr.SourceImageForMeasurement:
    return hd.sr.SourceImageForMeasurement(
        ref.sop_class_uid, ref.sop_instance_uid, list(frames) or None
    )


def _item_certainty(value: float) -> Dataset:
    """A HAS PROPERTIES NUM Certainty of Finding child for one evaluation."""
    return hd.sr.NumContentItem(
        name=concept(codes.CERTAINTY_OF_FINDING),
        value=percent(value),
        unit=concept(codes.PERCENT),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )


def _attach(item: Dataset, child: Dataset) -> None:
    if "ContentSequence" not in item:
        item.ContentSequence = hd.sr.ContentSequence()
    item.ContentSequence.append(child)


def group_confidence(finding: Finding) -> tuple[float | None, bool]:
    """The group's Certainty of Finding, and whether evaluations keep their own.

    Raises ``ValueError`` when measurements carry confidences and nothing says
    which one is the group's.
    """
    evaluations = [e.confidence for e in finding.evaluations if e.confidence is not None]
    measurements = [m.confidence for m in finding.measurements if m.confidence is not None]
    if finding.confidence is not None:
        # An evaluation whose confidence is the group's needs no certainty of its own.
        return finding.confidence, any(c != finding.confidence for c in evaluations)
    if len(evaluations) + len(measurements) == 1:
        return (evaluations or measurements)[0], False
    if measurements:
        raise ValueError(
            f"finding {finding.tracking_id!r}: several measurements carry confidences and TID 300 "
            "has no place for them: set Finding.confidence (the group's Certainty of Finding) "
            "or give each measurement its own Finding"
        )
    return None, bool(evaluations)


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    out = []
    confidence, _ = group_confidence(finding)
    if confidence is not None:
        out.append(_certainty(confidence, finding.references))
    for m in finding.measurements:
        # Every NUM gets an INFERRED FROM image: OHIF before PR #5703 reads each NUM's
        # ContentSequence without a check (results-notes §5).  A measurement read off
        # given frames points at those; otherwise at the whole source instance.
        num = hd.sr.Measurement(
            name=concept(m.concept),
            value=float(m.value),
            unit=concept(m.unit),
            referenced_images=[_measurement_source(r, m.frame_numbers) for r in finding.references],
        )
        out.append(num)
    return out


def _evaluations(finding: Finding, per_item: bool) -> list[hd.sr.QualitativeEvaluation]:
    out = []
    for e in finding.evaluations:
        code_item = hd.sr.QualitativeEvaluation(concept(e.concept), concept(e.value))
        if per_item and e.confidence is not None:
            _attach(code_item[0], _item_certainty(e.confidence))
        out.append(code_item)
    return out


def _group(
    finding: Finding, findings: Findings, tracking_uid: str, sources: SourceIndex,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    if not finding.references:
        raise ValueError(f"finding {finding.tracking_id!r}: at least one ImageReference is needed")
    for ref in finding.references:
        sources.get(ref)
        for m in finding.measurements:
            sources.get(ImageReference(ref.sop_instance_uid, ref.sop_class_uid, m.frame_numbers))
    _, per_item = group_confidence(finding)
    common: dict[str, Any] = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=finding.tracking_id),
        finding_type=concept(finding.finding),
        finding_sites=[hd.sr.FindingSite(concept(finding.finding_site))] if finding.finding_site else None,
        # TID 4019 per group (IHE AIR); no manufacturer= (PixelMed 2022 W1).
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=findings.module,
            version=findings.model_version,
            parameters=[f"sha256={findings.model_sha256}"] if findings.model_sha256 else None,
        ),
        measurements=_measurements(finding) or None,
        qualitative_evaluations=_evaluations(finding, per_item) or None,
    )
    if finding.point is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    r.sop_class_uid, r.sop_instance_uid, list(r.frame_numbers) or None)
                for r in finding.references
            ],
            **common,
        )
    if len(finding.references) != 1:
        raise ValueError(
            f"finding {finding.tracking_id!r}: a point lies on one image, "
            f"got {len(finding.references)} references"
        )
    ref = finding.references[0]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[finding.point.column, finding.point.row]], dtype=float),
        source_image=hd.sr.SourceImageForRegion(
            ref.sop_class_uid, ref.sop_instance_uid, list(ref.frame_numbers) or None),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=region, geometric_purpose=concept(codes.CENTER), **common
    )
    _recode_region_source(group[0])
    return group


def _recode_region_source(group_item: Dataset) -> None:
    """Name the SCOORD's source image (111040, DCM, "Original Source").

    highdicom writes (260753009, SCT, "Source"); Stone Web Viewer draws a SCOORD only
    when its SELECTED FROM image has the DCM concept.  Both validate (results-notes §5).
    """
    for item in group_item.ContentSequence:
        if item.ValueType != "SCOORD":
            continue
        for child in item.get("ContentSequence", []):
            if child.ValueType == "IMAGE":
                child.ConceptNameCodeSequence = [concept(codes.ORIGINAL_SOURCE)]


def build_sr(
    findings: Findings,
    selected: Sequence[Finding],
    sources: SourceIndex,
    device: Device,
    placement: Placement,
    *,
    tracking_uids: Sequence[str],
    sop_class_uid: str = ComprehensiveSRStorage,
    predecessors: Sequence[Dataset] = (),
) -> Dataset:
    """One TID 1500 Imaging Measurement Report over ``selected`` findings.

    Parameters
    ----------
    findings : Findings
        The module's output (module, model version and sha256 go into TID 4019).
    selected : sequence of Finding
        The findings of this document: all image-level or all with a point.
    sources : SourceIndex
        Headers of the job's inputs; the SR joins their study.
    device : Device
        The node as observer.
    placement : Placement
        The SR series and instance.
    tracking_uids : sequence of str
        One Tracking Unique Identifier per finding.
    sop_class_uid : str
        Comprehensive SR (default) or Comprehensive 3D SR.
    predecessors : sequence of Dataset
        Headers of the SRs this one supersedes (Predecessor Documents Sequence).

    Returns
    -------
    pydicom.dataset.Dataset
        The SR document (a highdicom ``ComprehensiveSR`` or ``Comprehensive3DSR``).
    """
    if not selected:
        raise ValueError("build_sr: no findings to report")
    kinds = {f.point is not None for f in selected}
    if len(kinds) != 1:
        raise ValueError("build_sr: image-level and point findings go into separate documents")
    if len(tracking_uids) != len(selected):
        raise ValueError("build_sr: one tracking UID per finding is needed")
    groups = [_group(f, findings, uid, sources) for f, uid in zip(selected, tracking_uids, strict=True)]

    referenced = sources.resolve([r for f in selected for r in f.references])
    modality = str(referenced[0].get("Modality", ""))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device.observer_context()),
        # Exactly one Procedure Reported (PixelMed 2022, E2), from the old∩new CID 100.
        procedure_reported=concept(codes.PROCEDURE_BY_MODALITY.get(modality, codes.IMAGING_PROCEDURE)),
        imaging_measurements=groups,
        title=concept(codes.IMAGING_MEASUREMENT_REPORT),
        # The Image Library is required by OHIF (it dereferences it unchecked).
        referenced_images=[library_entry(ds) for ds in referenced],
    )
    sr_class = SR_CLASSES.get(sop_class_uid)
    if sr_class is None:
        raise ValueError(f"SR SOP Class {sop_class_uid} is not one the node writes")
    probe = Dataset()
    probe.ContentSequence = report[0].ContentSequence
    schemes = private_schemes_in(probe)
    sr = sr_class(
        # evidence[0] decides the study: a source of the reported study (pitfall §7).
        evidence=referenced,
        content=report,
        **placement.kwargs(),
        **device.equipment(),
        is_complete=True,
        is_final=False,  # AI output: PRELIMINARY and UNVERIFIED until a person signs it
        is_verified=False,
        previous_versions=list(predecessors) or None,
        coding_schemes=coding_scheme_items(schemes) or None,
    )
    return sr
