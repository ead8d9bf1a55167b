"""Writing synthetic DSA runs as X-Ray Angiographic Image Storage multi-frame files.

The headers are those of a subtracted run exported from an angiography system
(PS3.3 A.14 XA IOD): Patient, General Study/Series/Equipment/Image, Image Pixel,
Cine and Multi-frame (Frame Time as the frame increment), X-Ray Image, X-Ray
Acquisition and XA Positioner modules, and SOP Common.  The pixels are already
subtracted (``DERIVED``), so no Mask module is written: a viewer would subtract again.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

from ai.quality.synthetic import BITS_STORED, RunParams

logger = logging.getLogger(__name__)

#: (0018,1063) Frame Time: the attribute the Frame Increment Pointer names (C.7.6.6.1.1).
FRAME_TIME_TAG = 0x00181063
DETECTOR_MM = 300.0  # flat-panel field of view


def xa_dataset(
    p: RunParams, frames: np.ndarray, *, patient_id: str, study_uid: str, series_uid: str,
    series_number: int, when: dt.datetime, uid_prefix: str | None = None,
) -> Dataset:
    """A complete XA dataset (with file meta) for rendered frames (T, H, W) uint16."""
    n, rows, cols = frames.shape
    sop_uid = generate_uid(prefix=uid_prefix)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = sop_uid
    # Patient
    ds.PatientName = f"SYNTHETIC^DSA{patient_id[-4:]}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic neuro DSA (dicomnode)"
    # General Series
    ds.Modality = "XA"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    proj = p.labels["projection"].upper()
    ds.SeriesDescription = f"DSA HEAD {proj}"
    ds.BodyPartExamined = "HEAD"
    # General Equipment
    ds.Manufacturer = "dicomnode synthetic"
    ds.ManufacturerModelName = "quality.synthetic"
    ds.SoftwareVersions = "1"
    # General Image / General Acquisition
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""  # type 2C: XA projection images carry no orientation
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"]
    ds.BurnedInAnnotation = "YES" if p.labels.get("text") == "present" else "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"  # subtraction is done on log-transformed intensities
    # Modality LUT module: required with LOG (PS3.3 A.14.3); identity, unspecified units.
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 600
    ds.WindowWidth = 900
    # Multi-frame and Cine
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = FRAME_TIME_TAG
    ds.FrameTime = f"{p.frame_time_ms:.1f}"
    ds.CineRate = max(1, round(1000.0 / p.frame_time_ms))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    # X-Ray Acquisition
    ds.KVP = 80
    ds.RadiationSetting = "GR"
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 100
    ds.FieldOfViewShape = "RECTANGLE"
    ds.ImagerPixelSpacing = [f"{DETECTOR_MM / rows:.4f}", f"{DETECTOR_MM / cols:.4f}"]
    ds.DistanceSourceToDetector = 1200
    ds.DistanceSourceToPatient = 800
    # XA Positioner
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = f"{p.primary_angle:.1f}"
    ds.PositionerSecondaryAngle = f"{p.secondary_angle:.1f}"
    ds.PixelData = np.ascontiguousarray(frames, dtype="<u2").tobytes()
    return ds


def write_run(path: Path, ds: Dataset) -> Path:
    """Save ``ds`` as a DICOM Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
