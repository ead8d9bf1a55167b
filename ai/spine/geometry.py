"""Image-plane geometry of MR slices: plane from orientation, slice order, pixel → patient.

PS3.3 C.7.6.2.1.1 defines the mapping this module implements.  With
``ImageOrientationPatient`` = (X, Y) (direction cosines of a row and of a column),
``PixelSpacing`` = (Δr, Δc) (between rows, between columns) and
``ImagePositionPatient`` = S (the *centre* of the first transmitted pixel), the centre
of pixel (column i, row j) lies at::

    P = S + i·Δc·X + j·Δr·Y

Landmarks here use the SCOORD convention of PS3.3 C.18.6.1.1 (the top-left *corner* of
the top-left pixel is (0, 0), so the centre of pixel (i, j) is (i + 0.5, j + 0.5)); the
conversion therefore subtracts half a pixel before applying the formula.
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

#: A normal component beyond this marks the plane (CCF-Net's dicom_utils threshold).
PLANE_THRESHOLD = 0.75


class PlaneValues(StrEnum):
    """Acquisition plane of a slice, from the normal of its ``ImageOrientationPatient``."""

    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    TRANSVERSE = "transverse"
    OBLIQUE = "oblique"


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row cosine × column cosine) of an ``ImageOrientationPatient``.

    Raises
    ------
    ValueError
        ``orientation`` does not hold six numbers or its cosines are parallel.
    """
    iop = np.asarray([float(v) for v in orientation], dtype=np.float64)
    if iop.shape != (6,):
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {len(iop)}")
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(iop)} has parallel cosines")
    return normal / norm


def plane_of(orientation: Sequence[float], threshold: float = PLANE_THRESHOLD) -> PlaneValues:
    """The plane whose axis the slice normal follows (|component| > ``threshold``)."""
    n = np.abs(slice_normal(orientation))
    if n[0] > threshold:
        return PlaneValues.SAGITTAL
    if n[1] > threshold:
        return PlaneValues.CORONAL
    if n[2] > threshold:
        return PlaneValues.TRANSVERSE
    return PlaneValues.OBLIQUE


def slice_positions(
    positions: Sequence[Sequence[float]], orientation: Sequence[float]
) -> np.ndarray:
    """Distance of each slice along the normal (mm): the key that orders a series."""
    normal = slice_normal(orientation)
    pos = np.asarray([[float(v) for v in p] for p in positions], dtype=np.float64)
    return pos @ normal


def pixel_to_patient(
    column: float,
    row: float,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> tuple[float, float, float]:
    """Patient coordinates (mm) of a point given in SCOORD pixel coordinates.

    Parameters
    ----------
    column, row : float
        Point on the image, pixel units, top-left corner of the image at (0, 0).
    position : sequence of 3 float
        ``ImagePositionPatient`` of the slice.
    orientation : sequence of 6 float
        ``ImageOrientationPatient`` of the slice.
    pixel_spacing : sequence of 2 float
        ``PixelSpacing``: row spacing (between rows) then column spacing.

    Returns
    -------
    tuple of 3 float
        (x, y, z) in the patient coordinate system (LPS), millimetres.
    """
    iop = np.asarray([float(v) for v in orientation], dtype=np.float64)
    origin = np.asarray([float(v) for v in position], dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    # Half a pixel: ImagePositionPatient is the centre of the first pixel, SCOORD its corner.
    p = origin + (column - 0.5) * col_spacing * iop[:3] + (row - 0.5) * row_spacing * iop[3:]
    return (float(p[0]), float(p[1]), float(p[2]))


def patient_to_pixel(
    point: Sequence[float],
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> tuple[float, float]:
    """Inverse of :func:`pixel_to_patient` for a point on the slice plane: (column, row)."""
    iop = np.asarray([float(v) for v in orientation], dtype=np.float64)
    d = np.asarray([float(v) for v in point], dtype=np.float64) - np.asarray(
        [float(v) for v in position], dtype=np.float64
    )
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    column = float(d @ iop[:3]) / col_spacing + 0.5
    row = float(d @ iop[3:]) / row_spacing + 0.5
    return column, row
