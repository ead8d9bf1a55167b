"""From one prediction's :class:`~ai.core.contract.Findings` to the DICOM objects a job emits.

:func:`build_results` is the job runner's entry point.  It decides which documents
exist and what identifies them; :mod:`~dicomnode.results.sr`,
:mod:`~dicomnode.results.sc`, :mod:`~dicomnode.results.kos` and
:mod:`~dicomnode.results.gspr` build each one (the summary SR too comes from ``sr``).

Objects come back in delivery order: Secondary Captures, then the SR(s) and the
optional summary SR, then the KOS and GSPS that reference images, so a PACS has each referenced object before the
document pointing at it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

import dicomnode
from ai.core.contract import Findings, RenderedImage
from dicomnode.config import Settings
from dicomnode.results.codes import code_of, codes
from dicomnode.results.device import Device, Placement
from dicomnode.results.gspr import build_gsps
from dicomnode.results.kos import build_kos, frames_by_instance
from dicomnode.results.sc import build_sc
from dicomnode.results.sources import SourceIndex, read_header
from dicomnode.results.sr import SR_SOP_CLASSES, build_sr, build_summary, is_summary
from dicomnode.results.srread import content_items
from dicomnode.results.uids import ResultIdentity, device_uid

logger = logging.getLogger(__name__)

#: Object kinds as stored in ``Result.kind`` (the DICOM modality of each object).
SR, SC, KO, PR = "SR", "SC", "KO", "PR"
#: Series Number of each kind's new series: AI output sorts after acquired series.
SERIES_NUMBERS = {SR: 901, SC: 902, KO: 903, PR: 904}
#: The summary SR (``BuildOptions.summary_sr``) has a series of its own, so a viewer
#: lists it as a row of its own ("AI <module>: summary"); UIDs derive from this name.
SUMMARY, SUMMARY_SERIES_NUMBER = "SR-summary", 905
#: Instance index of the two possible SRs within the job's SR series.
IMAGE_SR, ROI_SR = 0, 1


@dataclass(frozen=True)
class BuildOptions:
    """How results are written (the ``[results]`` settings once the config has them).

    Parameters
    ----------
    sr_storage : str
        ``"comprehensive"`` (88.33, default: Stone draws its overlays) or
        ``"comprehensive3d"`` (88.34, what IHE AIR names).
    gsps : bool
        Also write a Grayscale Softcopy Presentation State with the landmark points,
        for viewers that draw no SR graphics (Weasis).
    summary_sr : bool
        Also write the image-level findings as sentences in a TID 2000 Enhanced SR
        (:func:`~dicomnode.results.sr.build_summary`), which OHIF shows as text where the TID
        1500 SR's labels of several image-level findings overlap.
    """

    sr_storage: str = "comprehensive"
    gsps: bool = False
    summary_sr: bool = False

    def __post_init__(self) -> None:
        if self.sr_storage not in SR_SOP_CLASSES:
            raise ValueError(f"results.sr_storage: {self.sr_storage!r} is not one of "
                             f"{', '.join(SR_SOP_CLASSES)}")


@dataclass(frozen=True)
class ResultObject:
    """One built object, ready for :func:`~dicomnode.results.store.store_results`.

    ``supersedes`` lists the SOP Instance UIDs of earlier documents this one replaces
    (its Predecessor Documents Sequence); ``findings`` is the JSON kept in the index.
    """

    kind: str
    dataset: Dataset
    module: str
    supersedes: tuple[str, ...] = ()
    findings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)


def _plain(value: Any) -> Any:
    """JSON for what modules put in ``extra`` and ``gate``: numpy scalars and arrays too."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def findings_json(findings: Findings) -> dict[str, Any]:
    """The findings as plain JSON (codes as value/scheme/meaning objects) for the index."""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(findings), default=_plain))
    return data


def node_device(settings: Settings) -> Device:
    """The node as observer and equipment: stable UID from ``uid_root`` and AE title."""
    return Device(
        uid=device_uid(settings.node.uid_root, settings.node.aetitle),
        name=settings.node.aetitle,
        software_version=f"dicomnode {dicomnode.__version__}",
    )


def _has_scoord(ds: Dataset) -> bool:
    """Whether ``ds`` is a point SR: a measurement group holding a SCOORD itself (TID 1410).

    Image-level groups have SCOORDs too, one level down (a NUM's whole-frame region).
    """
    return any(
        item.get("ValueType") == "CONTAINER"
        and code_of(item.ConceptNameCodeSequence[0]).value == codes.MEASUREMENT_GROUP.value
        and any(child.get("ValueType") == "SCOORD" for child in item.get("ContentSequence", []))
        for item in content_items(ds)
    )


def _description(module: str, what: str) -> str:
    return f"AI {module}: {what}"[:64]


def build_results(
    findings: Findings,
    images: Sequence[RenderedImage],
    sources: Sequence[Dataset | str | Path],
    settings: Settings,
    predecessor: Dataset | Sequence[Dataset] | None = None,
    *,
    options: BuildOptions | None = None,
) -> list[ResultObject]:
    """Every DICOM object one prediction yields.

    Parameters
    ----------
    findings : Findings
        What the module's ``predict`` returned.
    images : sequence of RenderedImage
        What its ``render`` returned (one Secondary Capture each).
    sources : sequence of Dataset or path
        The case's input instances (headers suffice; paths are read with
        ``stop_before_pixels``).  Their SOP Instance UIDs are part of every result UID.
    settings : Settings
        ``node.uid_root`` and ``node.aetitle`` name the objects and the observer.
    predecessor : Dataset or sequence of Dataset, optional
        Headers of the SR(s) of an earlier run on this study that the new SR(s)
        supersede: each is listed in a new SR's Predecessor Documents Sequence (an
        SR with SCOORD groups in the new point SR, the others in the image-level one),
        and the new UIDs differ from a run without predecessors.
    options : BuildOptions, optional
        SR storage class and GSPS switch.

    Returns
    -------
    list of ResultObject
        In delivery order: SCs, SR(s), summary SR, KOS, GSPS.

    Raises
    ------
    ValueError
        A finding that refers to an instance outside ``sources``, a frame number
        outside NumberOfFrames, a malformed rendering, or sources of several studies.
    """
    options = options or BuildOptions()
    index = SourceIndex(read_header(s) if isinstance(s, str | Path) else s for s in sources)
    predecessors = ([predecessor] if isinstance(predecessor, Dataset) else list(predecessor or ()))
    identity = ResultIdentity.of(
        settings.node.uid_root, index.study_instance_uid, index.sop_instance_uids,
        findings.module, findings.model_version,
        salt=",".join(sorted(str(p.SOPInstanceUID) for p in predecessors)),
    )
    device = node_device(settings)
    module = findings.module
    out: list[ResultObject] = []

    def place(kind: str, number: int, what: str) -> Placement:
        return Placement(identity.series_uid(kind), SERIES_NUMBERS[kind],
                         identity.sop_uid(kind, number), number + 1, _description(module, what))

    scs: list[Dataset] = []
    for i, image in enumerate(images):
        sc = build_sc(image, index.get(image.source), device,
                      place(SC, i, "images, not for diagnosis"),
                      derivation=f"{module} {findings.model_version}: {image.caption}")
        scs.append(sc)
        out.append(ResultObject(SC, sc, module, findings={"caption": image.caption}))

    image_level = [f for f in findings.findings if f.point is None]
    points = [f for f in findings.findings if f.point is not None]
    # Earlier summaries are superseded by the new summary, else by the SRs below.
    summary_preds = [p for p in predecessors if is_summary(p)]
    if options.summary_sr and image_level:
        predecessors = [p for p in predecessors if not is_summary(p)]
    else:
        summary_preds = []
    roi_preds = [p for p in predecessors if _has_scoord(p)]
    image_preds = [p for p in predecessors if not _has_scoord(p)]
    # A predecessor without a counterpart still gets superseded by whichever SR exists.
    if not points:
        image_preds, roi_preds = predecessors, []
    elif not image_level:
        image_preds, roi_preds = [], predecessors
    for index_in_series, selected, preds, what in (
        (IMAGE_SR, image_level, image_preds, "report"),
        (ROI_SR, points, roi_preds, "landmarks"),
    ):
        if not selected:
            continue
        sr = build_sr(
            findings, selected, index, device, place(SR, index_in_series, "report"),
            tracking_uids=[identity.tracking_uid(SR, index_in_series * 10000 + j, f.tracking_id)
                           for j, f in enumerate(selected)],
            sop_class_uid=SR_SOP_CLASSES[options.sr_storage],
            predecessors=preds,
        )
        out.append(ResultObject(
            SR, sr, module, supersedes=tuple(str(p.SOPInstanceUID) for p in preds),
            findings=findings_json(dataclasses.replace(findings, findings=tuple(selected))),
        ))
        logger.debug("built %s SR %s with %d groups", what, sr.SOPInstanceUID, len(selected))

    if options.summary_sr and image_level:
        summary = build_summary(
            image_level, index, device,
            Placement(identity.series_uid(SUMMARY), SUMMARY_SERIES_NUMBER,
                      identity.sop_uid(SUMMARY, 0), 1, _description(module, "summary")),
            predecessors=summary_preds,
        )
        out.append(ResultObject(
            SR, summary, module, supersedes=tuple(str(p.SOPInstanceUID) for p in summary_preds),
            findings={"summary": [f.tracking_id for f in image_level]},
        ))

    if findings.key_frames:
        frames = frames_by_instance(findings.key_frames)
        description = findings.summary or "AI key frames: " + "; ".join(
            "frames " + ", ".join(map(str, f)) for f in frames.values() if f)
        kos = build_kos(findings.key_frames, index, device, place(KO, 0, "key frames"),
                        description=description, also=scs)
        out.append(ResultObject(KO, kos, module, findings={"key_frames": frames}))

    if options.gsps and points:
        gsps = build_gsps(points, index, device, place(PR, 0, "landmark graphics"))
        out.append(ResultObject(PR, gsps, module))
    return out
