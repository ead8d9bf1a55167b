"""Benchmark data, written once under bench/out/data and reused (frame by frame: small RAM)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

ROOT_UID = "1.2.826.0.1.3680043.10.1495.8."


def _base(sop_class: str, modality: str, rows: int, columns: int, study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=ROOT_UID)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Patient", "BENCH", modality
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def xa_run(path: Path, frames: int, size: int = 1024) -> Path:
    """A 16-bit XA multi-frame run of ``frames`` frames (2 MB each)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base(XRayAngiographicImageStorage, "XA", size, size, generate_uid(prefix=ROOT_UID),
               generate_uid(prefix=ROOT_UID))
    ds.NumberOfFrames = frames
    ds.FrameTime = 66.7
    ds.save_as(path.with_suffix(".part"), enforce_file_format=True)
    frame = (np.arange(size * size, dtype=np.uint32) % 4096).astype("<u2").tobytes()
    length = size * size * 2 * frames
    with open(path.with_suffix(".part"), "ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        for i in range(frames):
            fh.write(frame[2 * i:] + frame[: 2 * i])
    path.with_suffix(".part").rename(path)
    return path


def mr_instances(directory: Path, n: int, size: int = 512) -> list[Path]:
    """``n`` single-frame 16-bit MR instances (0.5 MB each) of one series."""
    files = [directory / f"mr{i:05d}.dcm" for i in range(n)]
    if all(f.exists() for f in files):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(prefix=ROOT_UID), generate_uid(prefix=ROOT_UID)
    rng = np.random.default_rng(0)
    for i, f in enumerate(files):
        ds = _base(MRImageStorage, "MR", size, size, study, series)
        ds.InstanceNumber = i + 1
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype="<u2").tobytes()
        ds.save_as(f, enforce_file_format=True)
    return files
