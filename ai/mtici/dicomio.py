"""Synthetic pairs as DICOM: XA multi-frame DSA runs a PACS would send.

One study per case, a frontal (PositionerPrimaryAngle 0°) and a lateral (90°) run
acquired a second apart as a biplane system does, 12-bit MONOCHROME2 with vessels dark.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ai.mtici.synthetic import SyntheticCase

XA_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


def _uid(root: str, *parts: object) -> str:
    """Deterministic UID under ``root`` from ``parts`` (a retried write gives the same UIDs)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=root, entropy_srcs=[str(p) for p in parts]))


def write_run(
    case: SyntheticCase,
    view: str,
    path: Path,
    study_uid: str,
    series_number: int,
    acquisition: datetime,
    uid_root: str = "1.2.826.0.1.3680043.10.1495.",
    biplane: bool = False,
) -> Path:
    """Write one view of ``case`` as an XA multi-frame DSA run (12-bit, MONOCHROME2).

    Headers a PACS and the node read: PositionerPrimaryAngle 0 (frontal) / 90
    (lateral), FrameTime with FrameIncrementPointer, ImageType DERIVED\\PRIMARY\\
    BIPLANE A|B\\SUBTRACTION, MaskSubtractionSequence (AVG_SUB of frame 1),
    RecommendedViewingMode SUB, BodyPartExamined HEAD, empty PatientOrientation.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, ExplicitVRLittleEndian

    frames = case.frontal if view == "frontal" else case.lateral
    pixels = np.clip(np.rint(frames * 3000.0), 0, 4095).astype(np.uint16)
    series_uid = _uid(uid_root, case.case_id, view, "series")
    sop_uid = _uid(uid_root, case.case_id, view, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(XA_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UID(XA_STORAGE), UID(sop_uid)
    ds.PatientName, ds.PatientID = f"SYNTH^{case.case_id}", case.case_id[-16:]
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID(study_uid), UID(series_uid)
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    day, clock = acquisition.strftime("%Y%m%d"), acquisition.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = day
    ds.StudyTime, ds.SeriesTime = "080000", clock
    ds.ContentTime = ds.AcquisitionTime = clock
    ds.AcquisitionDateTime = day + clock
    ds.StudyDescription = "Cerebral angiography (synthetic)"
    ds.SeriesDescription = f"DSA {'AP' if view == 'frontal' else 'LAT'} post-thrombectomy (synthetic)"
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "XA", "dicomnode synthetic", "HEAD"
    ds.SeriesNumber, ds.InstanceNumber = series_number, 1
    ds.PatientOrientation = ""
    plane = ("BIPLANE A" if view == "frontal" else "BIPLANE B") if biplane else "SINGLE PLANE"
    ds.ImageType = ["DERIVED", "PRIMARY", plane, "SUBTRACTION"]
    if biplane:
        # PS3.3 C.8.7.1.1: a biplane image references its partner plane.
        partner = Dataset()
        partner.ReferencedSOPClassUID = UID(XA_STORAGE)
        partner.ReferencedSOPInstanceUID = UID(
            _uid(uid_root, case.case_id, "lateral" if view == "frontal" else "frontal", "instance"))
        ds.ReferencedImageSequence = DicomSequence([partner])
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = 0.0 if view == "frontal" else 90.0
    ds.PositionerSecondaryAngle = 0.0
    ds.KVP, ds.RadiationSetting = 80.0, "GR"
    ds.XRayTubeCurrent, ds.ExposureTime, ds.Exposure = 400, 100, 40
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1100.0, 750.0
    ds.FrameTime = round(case.frame_time_ms, 1)
    ds.CineRate = int(round(1000.0 / case.frame_time_ms))
    ds.NumberOfFrames = int(pixels.shape[0])
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.PixelIntensityRelationship = "LOG"
    # The Modality LUT Macro is required with LOG pixels (PS3.3 C.8.7.1.1.2): identity.
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.RecommendedViewingMode = "SUB"
    mask = Dataset()
    mask.MaskOperation = "AVG_SUB"
    mask.MaskFrameNumbers = [1]
    ds.MaskSubtractionSequence = DicomSequence([mask])
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(
    case: SyntheticCase,
    directory: Path,
    views: Sequence[str] = ("frontal", "lateral"),
    uid_root: str = "1.2.826.0.1.3680043.10.1495.",
) -> list[Path]:
    """Write the pair (or the chosen ``views``) as one study; returns the file paths.

    Both runs share StudyInstanceUID and an acquisition time (biplane), the lateral one
    a second later, as a biplane system stamps them.
    """
    study_uid = _uid(uid_root, case.case_id, "study")
    start = datetime(2026, 1, 1, 9, 0, 0)
    return [
        write_run(case, view, Path(directory) / f"{view}.dcm", study_uid, 10 + i,
                  start + timedelta(seconds=i), uid_root, biplane=len(views) == 2)
        for i, view in enumerate(views)
    ]
