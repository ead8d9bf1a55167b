"""Pixel → patient conversion against hand-made geometries, and plane detection."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ai.spine.geometry import (
    PlaneValues,
    patient_to_pixel,
    pixel_to_patient,
    plane_of,
    slice_positions,
)

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def test_centre_of_first_pixel_is_image_position_patient() -> None:
    # SCOORD (0.5, 0.5) is the centre of the top-left pixel, which IPP locates.
    p = pixel_to_patient(0.5, 0.5, (10.0, -100.0, 50.0), SAGITTAL, (0.5, 0.8))
    assert p == pytest.approx((10.0, -100.0, 50.0))


def test_sagittal_point_by_hand() -> None:
    # Column 10 (×0.8 mm along +y), row 20 (×0.5 mm along −z) from the first pixel centre.
    p = pixel_to_patient(10.5, 20.5, (10.0, -100.0, 50.0), SAGITTAL, (0.5, 0.8))
    assert p == pytest.approx((10.0, -92.0, 40.0))


def test_pixel_spacing_is_row_spacing_then_column_spacing() -> None:
    # One column step moves by the *second* PixelSpacing value, one row step by the first.
    a = pixel_to_patient(1.5, 0.5, (0.0, 0.0, 0.0), SAGITTAL, (2.0, 3.0))
    b = pixel_to_patient(0.5, 1.5, (0.0, 0.0, 0.0), SAGITTAL, (2.0, 3.0))
    assert a == pytest.approx((0.0, 3.0, 0.0))
    assert b == pytest.approx((0.0, 0.0, -2.0))


def test_oblique_sagittal_point_by_hand() -> None:
    # Rows rotated 20° about z: row direction (sin20, cos20, 0), columns straight down.
    s, c = math.sin(math.radians(20)), math.cos(math.radians(20))
    iop = (s, c, 0.0, 0.0, 0.0, -1.0)
    p = pixel_to_patient(100.5, 40.5, (-5.0, -120.0, 80.0), iop, (1.0, 1.25))
    expected = (-5.0 + 125.0 * s, -120.0 + 125.0 * c, 80.0 - 40.0)
    assert p == pytest.approx(expected)
    assert plane_of(iop) is PlaneValues.SAGITTAL  # |n.x| = cos 20° = 0.94 > 0.75


def test_patient_to_pixel_inverts_pixel_to_patient() -> None:
    rng = np.random.default_rng(0)
    iop = (0.1, 0.99498744, 0.0, 0.0, 0.0, -1.0)
    for _ in range(20):
        col, row = rng.uniform(0, 512, 2)
        p = pixel_to_patient(col, row, (3.0, -170.0, 120.0), iop, (0.6, 0.7))
        assert patient_to_pixel(p, (3.0, -170.0, 120.0), iop, (0.6, 0.7)) == pytest.approx(
            (col, row))


@pytest.mark.parametrize(("iop", "plane"), [
    ((0, 1, 0, 0, 0, -1), PlaneValues.SAGITTAL),
    ((1, 0, 0, 0, 1, 0), PlaneValues.TRANSVERSE),
    ((1, 0, 0, 0, 0, -1), PlaneValues.CORONAL),
    ((0.7071, 0.7071, 0, 0, 0, -1), PlaneValues.OBLIQUE),
])
def test_plane_follows_the_normal(iop: tuple[float, ...], plane: PlaneValues) -> None:
    assert plane_of(iop) is plane


def test_slices_order_along_the_normal() -> None:
    # Normal of the sagittal IOP is −x: ascending order is descending x (CCF-Net's order).
    keys = slice_positions([(8, 0, 0), (-4, 0, 0), (0, 0, 0)], SAGITTAL)
    assert list(np.argsort(keys)) == [0, 2, 1]


def test_parallel_cosines_are_rejected() -> None:
    with pytest.raises(ValueError, match="parallel"):
        plane_of((1, 0, 0, 1, 0, 0))
