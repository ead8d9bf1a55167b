"""Writing synthetic coronary cine runs as X-Ray Angiographic Image Storage files.

The headers are those of an unsubtracted coronary run exported from a cath lab
(PS3.3 A.14 XA IOD): Patient, General Study/Series/Equipment/Image, Image Pixel,
Contrast/Bolus, Cine and Multi-frame (Frame Time as the frame increment), X-Ray
Image, X-Ray Acquisition and XA Positioner modules, and SOP Common.  Image Type is
ORIGINAL\\PRIMARY\\SINGLE PLANE (no SUBTRACTION value, no Mask module), the pixels are
8-bit linear detector values (vessels dark), Patient Orientation is empty (type 2C;
projection images carry none).
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

logger = logging.getLogger(__name__)

#: (0018,1063) Frame Time: the attribute the Frame Increment Pointer names (C.7.6.6.1.1).
FRAME_TIME_TAG = 0x00181063
DETECTOR_MM = 250.0  # cardiac flat panel field of view


def xa_cine_dataset(
    frames: np.ndarray, fps: float, *, patient_id: str, study_uid: str, series_uid: str,
    series_number: int, when: dt.datetime, primary_angle: float = 0.0,
    secondary_angle: float = 0.0, description: str = "CORONARY LCA",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "SINGLE PLANE"),
) -> Dataset:
    """A complete XA dataset (with file meta) for (T, H, W) uint8 frames at ``fps``.

    Parameters
    ----------
    frames : numpy.ndarray
        (T, H, W) uint8, MONOCHROME2 (contrast-filled vessels dark).
    fps : float
        Frame rate; written as Frame Time (exact, ms) and rounded Cine Rate.
    image_type : tuple of str
        Image Type; tests pass a SUBTRACTION value to build a DSA decoy.
    """
    n, rows, cols = frames.shape
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = sop_uid
    # Patient
    ds.PatientName = f"SYNTHETIC^XCA{patient_id[-4:]}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19550101"
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic coronary angiography (dicomnode)"
    # General Series
    ds.Modality = "XA"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.BodyPartExamined = "HEART"
    # General Equipment
    ds.Manufacturer = "dicomnode synthetic"
    ds.ManufacturerModelName = "keyframes.synthetic"
    ds.SoftwareVersions = "1"
    # General Image / General Acquisition
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""  # type 2C: XA projection images carry no orientation
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.ImageType = list(image_type)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    # Contrast/Bolus (C.7.6.4: required when contrast was used; agent is type 2)
    ds.ContrastBolusAgent = "IODINE"
    ds.ContrastBolusRoute = "INTRA-ARTERIAL"
    # Multi-frame and Cine
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = FRAME_TIME_TAG
    ds.FrameTime = f"{1000.0 / fps:.6g}"
    ds.CineRate = max(1, round(fps))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    # X-Ray Acquisition
    ds.KVP = 75
    ds.RadiationSetting = "GR"
    ds.XRayTubeCurrent = 600
    ds.ExposureTime = 6
    ds.FieldOfViewShape = "RECTANGLE"
    ds.ImagerPixelSpacing = [f"{DETECTOR_MM / rows:.4f}", f"{DETECTOR_MM / cols:.4f}"]
    ds.DistanceSourceToDetector = 1100
    ds.DistanceSourceToPatient = 750
    # XA Positioner (LAO/RAO primary, cranial/caudal secondary)
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = f"{primary_angle:.1f}"
    ds.PositionerSecondaryAngle = f"{secondary_angle:.1f}"
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    return ds


def write_dataset(path: Path, ds: Dataset) -> Path:
    """Save ``ds`` as a DICOM Part 10 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
