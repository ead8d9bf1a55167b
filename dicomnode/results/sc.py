"""Secondary Capture images: a module's renderings for people, burned-in, never for diagnosis.

highdicom's ``SCImage.from_ref_dataset`` makes the single-frame SC (``…1.7``); it
leaves out what a PACS user needs to place and trust the picture (results-notes
§2.2), which :func:`build_sc` adds:

- ``BurnedInAnnotation = YES`` and "NOT FOR DIAGNOSIS" in ImageComments;
- ``SourceImageSequence`` to the source instance (and frame) with purpose
  (121322, DCM) "Source image for image processing operation" (CID 7202);
- ``BodyPartExamined`` (else dciodvfy wants Laterality, E8), ``Laterality`` when the
  source has one, and ``StudyDescription`` (else dcentvfy warns, W5), copied;
- an empty ``PatientOrientation``: a rendering (a montage, a labelled MinIP) has no
  known orientation, and Type 2C wants the attribute present (E9).
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ai.core.contract import RenderedImage
from dicomnode.results.codes import codes, concept
from dicomnode.results.device import Device, Placement
from dicomnode.results.sources import check_frames

NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"


def _copy(src: Dataset, dst: Dataset, *keywords: str) -> None:
    for keyword in keywords:
        value = src.get(keyword)
        if value not in (None, ""):
            setattr(dst, keyword, value)


def build_sc(image: RenderedImage, source: Dataset, device: Device, placement: Placement,
             *, derivation: str = "") -> Dataset:
    """One RGB Secondary Capture of ``image`` in the source's study.

    Parameters
    ----------
    image : RenderedImage
        ``pixels`` uint8 (rows, columns, 3); ``source`` the instance (and frame) shown.
    source : Dataset
        Header of that instance (``stop_before_pixels`` is enough).
    device : Device
        The node (Manufacturer, model, software version).
    placement : Placement
        The SC series and instance.
    derivation : str
        Derivation Description (default: the caption).
    """
    pixels = np.asarray(image.pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"RenderedImage {image.caption!r}: pixels must be uint8 (rows, columns, 3), "
            f"got {pixels.dtype} {pixels.shape}"
        )
    check_frames(source, image.source.frame_numbers)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom insists on an orientation for PATIENT (E7); cleared below.
        patient_orientation=("A", "F"),
        **placement.kwargs(),
        **device.equipment(),
    )
    sc["PatientOrientation"].value = ""
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "00"
    # WSD (workstation): an honest conversion type for an AI rendering (DI claims a scan).
    sc.ConversionType = "WSD"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}. {image.caption}".strip()[:10240]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if image.source.frame_numbers:
        ref.ReferencedFrameNumber = list(image.source.frame_numbers)
    purpose = concept(codes.SOURCE_IMAGE_FOR_PROCESSING)
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = (derivation or image.caption)[:1024]
    sc.DerivationCodeSequence = [concept(codes.DERIVATION_SEGMENTATION)]
    _copy(source, sc, "BodyPartExamined", "Laterality", "StudyDescription")
    return sc
