"""Key Object Selection documents: the key frames a module found, so any viewer jumps there.

highdicom's KOS (TID 2010) has two gaps that :func:`build_kos` closes after
construction (results-notes §2.3):

- no frame-level API: ``ReferencedFrameNumber`` is set on each IMAGE item's
  Referenced SOP Sequence;
- every IMAGE/COMPOSITE item gets the concept name (260753009, SCT, "Source"),
  which TID 2010 forbids (PixelMed E10).  It is deleted *after* the document is
  built, because highdicom's evidence collection reads it (E11).
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from ai.core.contract import ImageReference
from dicomnode.results.codes import codes, concept
from dicomnode.results.device import Device, Placement
from dicomnode.results.sources import SourceIndex


def frames_by_instance(key_frames: Sequence[ImageReference]) -> dict[str, list[int]]:
    """Frame numbers per SOP Instance UID, sorted, first-seen instance order kept."""
    out: dict[str, set[int]] = {}
    for ref in key_frames:
        out.setdefault(ref.sop_instance_uid, set()).update(ref.frame_numbers)
    return {uid: sorted(frames) for uid, frames in out.items()}


def build_kos(
    key_frames: Sequence[ImageReference],
    sources: SourceIndex,
    device: Device,
    placement: Placement,
    *,
    description: str,
    also: Sequence[Dataset] = (),
) -> Dataset:
    """A KOS "Of Interest" flagging ``key_frames`` (and ``also``: e.g. the SC images).

    Parameters
    ----------
    key_frames : sequence of ImageReference
        Source instances with the 1-based frames to flag (checked against NumberOfFrames).
    sources : SourceIndex
        Headers of the job's inputs.
    device : Device
        The node, as the selecting observer.
    placement : Placement
        The KOS series and instance.
    description : str
        Key Object Description (113012), e.g. ``"AI key frames: start 3, apex 6, end 10"``.
    also : sequence of Dataset
        Further objects of the same study to list (the module's Secondary Captures).
    """
    if not key_frames:
        raise ValueError("build_kos: no key frames")
    selected = sources.resolve(key_frames)
    frames = frames_by_instance(key_frames)
    content = hd.ko.KeyObjectSelection(
        document_title=concept(codes.OF_INTEREST),
        referenced_objects=[*selected, *also],
        observer_device_context=device.observer_context(),
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[*selected, *also],
        content=content,
        **placement.kwargs(),
        **device.equipment(),
    )
    for item in kos.ContentSequence:
        if item.ValueType not in ("IMAGE", "COMPOSITE"):
            continue
        ref = item.ReferencedSOPSequence[0]
        wanted = frames.get(str(ref.ReferencedSOPInstanceUID))
        if wanted:
            ref.ReferencedFrameNumber = wanted
        del item.ConceptNameCodeSequence
    study_description = selected[0].get("StudyDescription")
    if study_description:
        kos.StudyDescription = study_description
    return kos
