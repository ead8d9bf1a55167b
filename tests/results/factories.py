"""Realistic source images for result tests: XA multi-frame runs and sagittal MR slices.

Headers follow what modalities send (XA with an empty Type 2C PatientOrientation, as
real DSA runs have; MR with orientation, position, spacing and a frame of
reference), with small pixel data so the files are complete instances that
``dciodvfy`` and ``dcentvfy`` can check beside the results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.1495.9."  # test sources: a sub-arc nobody else uses


@dataclass
class StudyHeader:
    """Patient and study attributes shared by every instance of one test study."""

    study_instance_uid: str = field(default_factory=lambda: generate_uid(ROOT))
    patient_name: str = "Müller^Anna"
    patient_id: str = "PID0001"
    patient_birth_date: str = "19560312"
    patient_sex: str = "F"
    study_date: str = "20260114"
    study_time: str = "101500"
    accession_number: str = "ACC20260114"
    study_id: str = "1"
    study_description: str = "Thrombectomy"
    referring_physician_name: str = "Doe^John"


def _base(study: StudyHeader, sop_class: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.study_id
    ds.StudyDescription = study.study_description
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.Manufacturer = "ACME Medical"
    ds.ManufacturerModelName = "Angio 3000"
    ds.InstitutionName = "Test Hospital"
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    return ds


def make_xa(
    study: StudyHeader,
    *,
    series_number: int = 1,
    frames: int = 12,
    primary_angle: float = 0.0,
    secondary_angle: float = 0.0,
    rows: int = 64,
    body_part: str = "HEAD",
    description: str = "DSA run",
) -> Dataset:
    """A subtracted multi-frame XA run with an empty PatientOrientation (real DSA data)."""
    sop_uid = generate_uid(ROOT)
    ds = _base(study, XA_SOP_CLASS, sop_uid)
    ds.Modality = "XA"
    ds.SeriesInstanceUID = generate_uid(ROOT)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""  # Type 2C, empty on real angiography systems
    ds.ImageType = ["DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTED"]
    ds.BodyPartExamined = body_part
    ds.AcquisitionDate = study.study_date
    ds.AcquisitionTime = study.study_time
    ds.KVP = "80"
    ds.XRayTubeCurrent = 400
    ds.ExposureTime = 100
    ds.Exposure = 40
    ds.RadiationSetting = "GR"
    ds.DistanceSourceToDetector = "1100"
    ds.DistanceSourceToPatient = "750"
    ds.ImagerPixelSpacing = [0.308, 0.308]
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = primary_angle
    ds.PositionerSecondaryAngle = secondary_angle
    ds.PixelIntensityRelationship = "LOG"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.FrameTime = "250"
    ds.CineRate = 4
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    rng = np.random.default_rng(abs(hash(sop_uid)) % 2**32)
    ds.PixelData = rng.integers(0, 255, (frames, rows, rows), dtype=np.uint8).tobytes()
    return ds


def make_mr_series(
    study: StudyHeader,
    *,
    slices: int = 5,
    series_number: int = 3,
    rows: int = 64,
    spacing: float = 4.0,
    description: str = "T2 SAG",
) -> list[Dataset]:
    """Sagittal T2 slices of the lumbar spine with orientation, position and spacing."""
    series_uid = generate_uid(ROOT)
    frame_of_reference = generate_uid(ROOT)
    out = []
    for index in range(slices):
        sop_uid = generate_uid(ROOT)
        ds = _base(study, MR_SOP_CLASS, sop_uid)
        ds.Manufacturer = "ACME Medical"
        ds.ManufacturerModelName = "MR 1.5T"
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.BodyPartExamined = "LSPINE"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "3000"
        ds.EchoTime = "100"
        ds.EchoTrainLength = "16"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = "4"
        ds.SpacingBetweenSlices = str(spacing)
        ds.PixelSpacing = [0.9375, 0.9375]
        # Sagittal: rows run anterior→posterior (+y), columns head→feet (−z).
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        x = (index - (slices - 1) / 2) * spacing
        ds.ImagePositionPatient = [x, -30.0, 60.0]
        ds.SliceLocation = x
        ds.PatientPosition = "HFS"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = rows
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        rng = np.random.default_rng(index)
        ds.PixelData = rng.integers(0, 4095, (rows, rows), dtype=np.uint16).tobytes()
        out.append(ds)
    return out


def write(ds: Dataset, directory: Path) -> Path:
    """Save ``ds`` as a DICOM file named by its SOP Instance UID."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
