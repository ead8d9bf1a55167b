"""Small, valid DICOM files made in the test (no downloads): MR, CT, XA multi-frame.

Also the transfer-syntax variants the receiver tests push: JPEG baseline and RLE via
dcmtk's own encoders (``dcmcjpeg``, ``dcmcrle``) and JPEG 2000 via pydicom's encoder.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    XRayAngiographicImageStorage,
    generate_uid,
)

ROOT = "1.2.826.0.1.3680043.10.1495.9."


def uid() -> str:
    return generate_uid(prefix=ROOT)


def make_dataset(
    sop_class: str = MRImageStorage,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    modality: str = "MR",
    instance_number: int = 1,
    seed: int = 0,
    bits: int = 16,
    **attrs: object,
) -> Dataset:
    """A minimal but valid image data set with random pixels (reproducible from ``seed``)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or uid()
    ds.SeriesInstanceUID = series_uid or uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.StudyDescription = "dicomnode test"
    ds.SeriesDescription = f"{modality} test series"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bits == 8 else np.uint16
    high = 255 if bits == 8 else 4095
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    ds.PixelData = rng.integers(0, high, size=shape, dtype=dtype).tobytes()
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def xa_run(path: Path, frames: int = 8, rows: int = 128, columns: int = 128, **kw: object) -> Path:
    """An XA multi-frame run (8-bit, as angiography systems send)."""
    ds = make_dataset(XRayAngiographicImageStorage, rows=rows, columns=columns, frames=frames,
                      modality="XA", bits=8, **kw)
    ds.FrameTime = 66.7
    ds.FrameIncrementPointer = 0x00181063
    ds.PositionerPrimaryAngle = 0.0
    ds.PositionerSecondaryAngle = 0.0
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "PRIMARY", "SUBTRACTION"]
    ds.BodyPartExamined = "HEAD"
    return write(ds, path)


def mr_series(directory: Path, n: int = 5, study_uid: str | None = None, **kw: object) -> list[Path]:
    """``n`` single-frame MR instances of one series."""
    study_uid = study_uid or uid()
    series_uid = uid()
    return [
        write(make_dataset(MRImageStorage, study_uid=study_uid, series_uid=series_uid,
                           instance_number=i + 1, seed=i, **kw), directory / f"mr{i:04d}.dcm")
        for i in range(n)
    ]


def ct_instance(path: Path, **kw: object) -> Path:
    return write(make_dataset(CTImageStorage, modality="CT", **kw), path)


def jpeg_baseline(src: Path, dst: Path) -> Path:
    """JPEG baseline (1.2.840.10008.1.2.4.50) by dcmtk's dcmcjpeg (needs 8-bit input)."""
    subprocess.run(["/usr/bin/dcmcjpeg", "+eb", str(src), str(dst)], check=True, capture_output=True)
    return dst


def rle(src: Path, dst: Path) -> Path:
    """RLE Lossless by dcmtk's dcmcrle."""
    subprocess.run(["/usr/bin/dcmcrle", str(src), str(dst)], check=True, capture_output=True)
    return dst


def jpeg2000(ds: Dataset, dst: Path) -> Path:
    """JPEG 2000 Lossless by pydicom's encoder (pylibjpeg-openjpeg)."""
    ds.compress(JPEG2000Lossless)
    return write(ds, dst)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information (what was sent on the wire)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]
