"""Synthetic studies as MR DICOM files, in the Tianchi layout (``studyN/imageK.dcm``).

Each study is one sagittal T2 series (the annotated one), a sagittal T1 decoy with the
same geometry and an axial T2 decoy, all MR Image Storage with the Image Plane module
filled in (``PixelSpacing``, ``ImageOrientationPatient``, ``ImagePositionPatient``,
``SliceThickness``), ``BodyPartExamined`` LSPINE, one Frame of Reference.  Next to the
study folders goes the challenge's annotation JSON (:func:`ai.spine.datasets.tianchi_record`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ai.spine.datasets import SpineSample, tianchi_record

logger = logging.getLogger(__name__)

#: Sagittal rows run anterior → posterior (+y, LPS), columns superior → inferior (−z).
SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def synthetic_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (same parts, same UID: reproducible studies)."""
    return str(generate_uid(entropy_srcs=["dicomnode-spine", *map(str, parts)]))


def sagittal_positions(n_slices: int, size: int, spacing: float, thickness: float,
                       ) -> np.ndarray:
    """``ImagePositionPatient`` of each sagittal slice, in ascending order along the normal.

    The normal of :data:`SAGITTAL_IOP` is −x, so ascending order is descending x (the
    order CCF-Net sorts by: ``ImagePositionPatient[0]`` descending).
    """
    mid = n_slices // 2
    y0 = -size / 2 * spacing + spacing / 2
    z0 = size / 2 * spacing - spacing / 2
    return np.array([[-(k - mid) * thickness, y0, z0] for k in range(n_slices)])


@dataclass(frozen=True)
class SeriesSpec:
    """What differs between the series of one synthetic study."""

    pixels: np.ndarray
    series_uid: str
    sop_uids: tuple[str, ...]
    number: int
    description: str
    positions: np.ndarray
    orientation: tuple[float, ...]
    spacing: float
    thickness: float
    repetition_time: float
    echo_time: float


def mr_dataset(spec: SeriesSpec, k: int, study_uid: str, frame_uid: str, patient_id: str,
               ) -> pydicom.Dataset:
    """Slice ``k`` of ``spec`` as an MR Image Storage dataset."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(spec.sop_uids[k])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = spec.sop_uids[k]
    today = dt.date(2024, 1, 1).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "dicomnode synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR LUMBAR SPINE (synthetic)"
    ds.SeriesDescription = spec.description
    ds.PatientName = f"Synthetic^Spine{patient_id}"
    ds.PatientID = f"SYN-SPINE-{patient_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "LSPINE"
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = f"{spec.thickness:.4f}"
    ds.RepetitionTime = f"{spec.repetition_time:.1f}"
    ds.EchoTime = f"{spec.echo_time:.1f}"
    ds.EchoTrainLength = 16
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "1.5"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.number
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in spec.positions[k]]
    ds.ImageOrientationPatient = [f"{v:g}" for v in spec.orientation]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(spec.positions[k][0 if spec.orientation == SAGITTAL_IOP else 2]):.4f}"
    pix = np.ascontiguousarray(np.clip(spec.pixels[k], 0, 4095).astype(np.uint16))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pix.shape[0]), int(pix.shape[1])
    ds.PixelSpacing = [f"{spec.spacing:.6f}", f"{spec.spacing:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "1000"
    ds.WindowWidth = "2000"
    ds.PixelData = pix.tobytes()
    return ds


def study_series(sample: SpineSample) -> list[SeriesSpec]:
    """The T1 decoy, the annotated T2 and the axial decoy series of a synthetic sample.

    The decoys are redrawn from the sample's seed (``info["seed"]``, ``info["index"]``):
    the T2 slices come out identical, so the decoys share its anatomy.
    """
    from ai.spine.synthetic import draw_phantom

    seed, index = sample.info["seed"], sample.info["index"]
    phantom = draw_phantom(np.random.default_rng([seed, index]), size=sample.slices.shape[-1],
                           n_slices=len(sample.slices), decoys=True)
    spacing = float(sample.pixel_spacing[0])
    thickness = float(sample.info.get("thickness", 4.0))
    assert sample.positions is not None
    n_ax = len(phantom.axial)
    size = phantom.axial.shape[-1]
    ax_pos = np.array([[-size / 2 * 0.9 + 0.45, -size / 2 * 0.9 + 0.45, 10.0 * (k - n_ax // 2)]
                       for k in range(n_ax)])
    t1_uid = synthetic_uid(seed, index, "series-t1")
    ax_uid = synthetic_uid(seed, index, "series-ax")
    n = len(sample.slices)
    return [
        SeriesSpec(phantom.t1, t1_uid, tuple(synthetic_uid(t1_uid, k) for k in range(n)), 1,
                   "T1 SAG", sample.positions, SAGITTAL_IOP, spacing, thickness, 500.0, 10.0),
        SeriesSpec(np.asarray(sample.slices), sample.series_instance_uid,
                   sample.sop_instance_uids, 2, "T2 SAG", sample.positions, SAGITTAL_IOP,
                   spacing, thickness, 3000.0, 100.0),
        SeriesSpec(phantom.axial, ax_uid, tuple(synthetic_uid(ax_uid, k) for k in range(n_ax)),
                   3, "T2 AX", ax_pos, AXIAL_IOP, 0.9, 4.0, 3500.0, 100.0),
    ]


def write_study(sample: SpineSample, folder: Path) -> list[Path]:
    """Write every series of ``sample``'s study as ``folder/imageK.dcm``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    frame_uid = synthetic_uid(sample.study_instance_uid, "frame")
    patient = str(sample.info.get("index", 0))
    paths, k = [], 0
    for spec in study_series(sample):
        for j in range(len(spec.pixels)):
            path = folder / f"image{k}.dcm"
            ds = mr_dataset(spec, j, sample.study_instance_uid, frame_uid, patient)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            k += 1
    return paths


def write_tianchi(samples: Sequence[SpineSample], out_dir: Path | str,
                  name: str = "lumbar_synthetic") -> list[Path]:
    """Write studies as ``out_dir/name/studyN/imageK.dcm`` + ``out_dir/name_annotation.json``.

    Returns
    -------
    list of Path
        Every DICOM file written (the annotation JSON is not included).
    """
    root = Path(out_dir) / name
    paths: list[Path] = []
    records = []
    for n, sample in enumerate(samples):
        paths.extend(write_study(sample, root / f"study{n}"))
        records.append(tianchi_record(sample))
    ann = Path(out_dir) / f"{name}_annotation.json"
    ann.write_text(json.dumps(records, indent=1))
    logger.info("wrote %d studies (%d files) and %s", len(samples), len(paths), ann)
    return paths
