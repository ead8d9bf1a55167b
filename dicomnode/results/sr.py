"""TID 1500 Imaging Measurement Reports from a module's findings (highdicom).

One document per result type (results-notes §1.2): image-level findings become
TID 1501 groups in one SR, point landmarks TID 1410 SCOORD POINT groups in another,
because PixelMed's validator checks every group of a container as TID 1410 when
exactly one SCOORD group sits beside 1501 groups (E4).

Per finding, one measurement group::

    Tracking Identifier (readable text, viewers show it) + Tracking Unique Identifier
    Finding [+ Finding Site]
    Algorithm Name / Version / Parameters ("sha256=…")           TID 4019
    NUM Certainty of Finding (%)          └ INFERRED FROM (see below: source, frames)
    NUM per measurement (UCUM)            └ INFERRED FROM (source, its frames)
    CODE per evaluation                   [└ HAS PROPERTIES NUM certainty]
    1501: IMAGE Source of Measurement (frames)   1410: SCOORD POINT └ SELECTED FROM IMAGE
    1501: TEXT Comment = the Tracking Identifier text

A NUM of a 1410 group is INFERRED FROM the IMAGE; a NUM of a 1501 group is INFERRED
FROM a SCOORD (111030, "Image Region") POLYLINE around the whole frame, SELECTED FROM
the image, one per frame named (none named: every frame).  That says the same thing —
inferred from the whole image — in the form OHIF 3.13 can open: it places every
measurement by its first SCOORD and failed ("Something went wrong") on image-level
groups without one.  OHIF then outlines the frame and labels it with the Comment's
text and each NUM (deploy/viewer/README.md).

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

:func:`build_summary` (at the end) writes the optional summary SR: the image-level
findings as sentences in a TID 2000 Enhanced SR, which OHIF shows as text.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from ai.core.contract import (
    Finding,
    Findings,
    ImageReference,
)
from dicomnode.results.codes import code_of, codes, coding_scheme_items, concept, private_schemes_in
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


def _certainty(value: float, refs: Sequence[ImageReference], sources: SourceIndex) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=concept(codes.CERTAINTY_OF_FINDING),
        value=percent(value),
        unit=concept(codes.PERCENT),
        referenced_coordinates=[c for r in refs for c in _whole_frame(r, r.frame_numbers, sources)],
    )


def _whole_frame(ref: ImageReference, frames: Sequence[int],
                 sources: SourceIndex) -> list[hd.sr.CoordinatesForMeasurement]:
    """INFERRED FROM SCOORD (111030) POLYLINE around the whole frame, one per frame.

    An image-level finding is inferred from the whole image; saying so as a region
    (rather than INFERRED FROM IMAGE) is what OHIF 3.13 needs to open the SR at all: it
    takes every measurement's place from its first SCOORD and throws without one
    (deploy/viewer/README.md).  One SCOORD per frame, because OHIF matches a single
    ReferencedFrameNumber; none named means the region on every frame.  SCOORD pixel
    coordinates run from the outer corner of the first pixel (PS3.3 C.18.6.1.1), so the
    frame is ``0..Columns`` x ``0..Rows``.
    """
    header = sources.get(ref)
    cols, rows = float(header.Columns), float(header.Rows)
    corners = np.array([[0.0, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]])
    return [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion(
                ref.sop_class_uid, ref.sop_instance_uid, None if frame is None else [frame]),
            purpose=concept(codes.IMAGE_REGION),
        )
        for frame in ([*frames] if frames else [None])
    ]


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


def _measurements(finding: Finding, sources: SourceIndex) -> list[hd.sr.Measurement]:
    out = []
    confidence, _ = group_confidence(finding)
    image_level = finding.point is None
    if confidence is not None:
        if image_level:
            out.append(_certainty(confidence, finding.references, sources))
        else:
            out.append(hd.sr.Measurement(
                name=concept(codes.CERTAINTY_OF_FINDING), value=percent(confidence),
                unit=concept(codes.PERCENT),
                referenced_images=[_measurement_source(r, r.frame_numbers) for r in finding.references],
            ))
    for m in finding.measurements:
        # Every NUM has an INFERRED FROM child: OHIF before PR #5703 reads each NUM's
        # ContentSequence without a check (results-notes §5).  A measurement read off
        # given frames points at those; otherwise at the whole source instance.  In an
        # image-level group it is the whole-frame region (see _whole_frame); TID 320
        # allows the IMAGE or the SCOORD row, not both (PixelMed reports it).
        if image_level:
            where: dict[str, Any] = {"referenced_coordinates": [
                c for r in finding.references for c in _whole_frame(r, m.frame_numbers, sources)]}
        else:
            where = {"referenced_images": [_measurement_source(r, m.frame_numbers)
                                           for r in finding.references]}
        out.append(hd.sr.Measurement(
            name=concept(m.concept), value=float(m.value), unit=concept(m.unit), **where))
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
        measurements=_measurements(finding, sources) or None,
        qualitative_evaluations=_evaluations(finding, per_item) or None,
    )
    if finding.point is None:
        image_group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(
                    r.sop_class_uid, r.sop_instance_uid, list(r.frame_numbers) or None)
                for r in finding.references
            ],
            **common,
        )
        # OHIF labels a group by its NUMs only, plus a Comment's text as the first line:
        # the readable Tracking Identifier goes there too, so the label says what was
        # found ("mTICI 2b (82 %)"), not only "Certainty of Finding: 82 %".
        image_group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=concept(codes.COMMENT), value=finding.tracking_id,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        return image_group
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


# ---------------------------------------------------------------------------
# The summary SR (BuildOptions.summary_sr): a job's image-level findings in words,
# as a TID 2000 Basic Diagnostic Imaging Report.
# ---------------------------------------------------------------------------
# The TID 1500 SR above stays the machine-readable result.  This document says the same findings as sentences, for viewers that show an SR as
# text: OHIF 3.13 draws a TID 1500 SR on its image and can only stack the labels of
# image-level groups on one whole-frame outline, where they overlap; any SR whose root
# is not (126000, DCM) it shows in its text view, where this one reads::
#
#     Diagnostic Imaging Report
#       Findings
#         mTICI 2b (82 %)
#         Successful reperfusion: yes (95 %)
#
# Stone Web Viewer and Weasis render SR text the same way.  Content::
#
#     CONTAINER (18748-4, LN, "Diagnostic Imaging Report")   TID 2000, SEPARATE
#      ├ HAS CONCEPT MOD  Language (en-US)
#      ├ HAS OBS CONTEXT  Observer Type = Device (TID 1004, the node)
#      └ CONTAINS CONTAINER (121070, DCM, "Findings")
#          └ CONTAINS TEXT (121071, DCM, "Finding") = a finding's Tracking Identifier text
#
# It is an Enhanced SR (88.22): TID 2000 needs neither SCOORD nor by-reference
# relationships, and readers that look for the node's TID 1500 document by its
# Comprehensive SR class (88.33/88.34) do not mistake it for one.

#: Only these SRs of the node have this root; :func:`is_summary` tells them apart.
SUMMARY_SOP_CLASS = EnhancedSRStorage


def is_summary(sr: Dataset) -> bool:
    """Whether ``sr`` is a summary this module wrote (an Enhanced SR rooted in 18748-4)."""
    names = sr.get("ConceptNameCodeSequence") or []
    if str(sr.get("SOPClassUID", "")) != SUMMARY_SOP_CLASS or not names:
        return False
    root = code_of(names[0])
    return (root.value, root.scheme) == (codes.DIAGNOSTIC_IMAGING_REPORT.value,
                                         codes.DIAGNOSTIC_IMAGING_REPORT.scheme)


def build_summary(
    selected: Sequence[Finding],
    sources: SourceIndex,
    device: Device,
    placement: Placement,
    *,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.EnhancedSR:
    """One TID 2000 report stating each finding's Tracking Identifier text.

    Parameters
    ----------
    selected : sequence of Finding
        The image-level findings of the job (those of the TID 1500 image-level SR).
    sources : SourceIndex
        Headers of the job's inputs; the report joins their study and lists the
        referenced ones as evidence.
    device : Device
        The node as observer and equipment.
    placement : Placement
        The summary's series and instance.
    predecessors : sequence of Dataset
        Earlier summaries this one supersedes (Predecessor Documents Sequence).

    Returns
    -------
    highdicom.sr.EnhancedSR
        The document.
    """
    if not selected:
        raise ValueError("build_summary: no findings to state")
    root = hd.sr.ContainerContentItem(
        name=concept(codes.DIAGNOSTIC_IMAGING_REPORT), is_content_continuous=False,
        template_id="2000",
    )
    findings = hd.sr.ContainerContentItem(
        name=concept(codes.FINDINGS), is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    findings.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=concept(codes.FINDING), value=f.tracking_id,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for f in selected
    ])
    root.ContentSequence = hd.sr.ContentSequence([
        *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *hd.sr.ObservationContext(observer_device_context=device.observer_context()),
        findings,
    ])
    referenced = sources.resolve([r for f in selected for r in f.references])
    return hd.sr.EnhancedSR(
        # evidence[0] decides the study: a source of the reported study (pitfall §7).
        evidence=referenced,
        content=root,
        **placement.kwargs(),
        **device.equipment(),
        is_complete=True,
        is_final=False,  # AI output: PRELIMINARY and UNVERIFIED until a person signs it
        is_verified=False,
        previous_versions=list(predecessors) or None,
    )
