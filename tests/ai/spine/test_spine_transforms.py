"""Coarse-to-fine encoding/decoding, flip TTA's mirrored x, augmentation moving points."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ai.spine.network import HEAT, OFF_X, OFF_Y, OUT_CHANNELS, CCFNet, flip_tta
from ai.spine.transforms import decode, encode, normalise_slices, random_affine


def _maps_from(points: np.ndarray, size: int) -> np.ndarray:
    t = encode(points, size)
    out = np.zeros((OUT_CHANNELS, size // 16, size // 16))
    out[HEAT], out[OFF_Y], out[OFF_X] = t["heat"], t["off_y"], t["off_x"]
    return out


def test_decoding_the_encoded_targets_recovers_the_points() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(2, 158, (11, 2))
    pred = decode(_maps_from(pts, 160), np.array([1.0, 1.0]))
    np.testing.assert_allclose(pred.coords, pts, atol=1e-5)


def test_decoded_points_are_scaled_back_to_the_slice() -> None:
    # A 512 × 400 (W × H) slice resized to 160²: factor (160/512, 160/400).
    rng = np.random.default_rng(1)
    pts = rng.uniform(2, 158, (11, 2))
    factor = np.array([160 / 512, 160 / 400])
    pred = decode(_maps_from(pts, 160), factor)
    np.testing.assert_allclose(pred.coords, pts / factor, atol=1e-4)


def test_off_grid_landmarks_are_masked() -> None:
    pts = np.full((11, 2), 80.0)
    pts[0] = (400.0, 80.0)  # far right of a 160 px input
    pts[1] = np.nan  # missing
    mask = encode(pts, 160)["mask"]
    assert mask[0] == 0 and mask[1] == 0 and mask[2:].all()


def test_flip_tta_mirrors_x_exactly() -> None:
    # TTA symmetrises any network: on the mirrored image it must give mirrored points
    # (x → W − x), which holds only if the x-offsets are negated when flipped back.
    torch.manual_seed(0)
    net = CCFNet(widths=(8, 8, 16), mid=16).eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        a = decode(flip_tta(net, x)[0], np.array([1.0, 1.0]))
        b = decode(flip_tta(net, torch.flip(x, dims=(-1,)))[0], np.array([1.0, 1.0]))
    np.testing.assert_allclose(b.coords[:, 0], 160.0 - a.coords[:, 0], atol=1e-3)
    np.testing.assert_allclose(b.coords[:, 1], a.coords[:, 1], atol=1e-3)
    np.testing.assert_allclose(b.prob_abnormal, a.prob_abnormal, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_affine_moves_points_with_the_image(seed: int) -> None:
    pts = np.array([[40.5, 30.5], [100.5, 120.5], [80.5, 80.5]])
    img = np.zeros((3, 160, 160), np.float32)
    for x, y in pts:
        img[:, int(y), int(x)] = 1.0
    img = np.stack([gaussian_filter(c, 2.0) for c in img])
    out, moved = random_affine(img, pts, np.random.default_rng(seed),
                               {"rotate_deg": 30, "scale": 0.2, "shift": 0.1})
    for x, y in moved:
        xi, yi = int(x), int(y)
        win = out[0, yi - 4:yi + 5, xi - 4:xi + 5]
        r, c = np.unravel_index(win.argmax(), win.shape)
        assert abs(xi - 4 + c + 0.5 - x) <= 1.0 and abs(yi - 4 + r + 0.5 - y) <= 1.0


def test_each_slice_is_scaled_on_its_own_percentiles() -> None:
    rng = np.random.default_rng(3)
    slices = np.stack([rng.uniform(0, 100, (200, 240)), rng.uniform(0, 3000, (200, 240))])
    img, factor = normalise_slices(slices, {"preprocessing": {"input_size": 160}})
    assert img.shape == (2, 160, 160) and img.dtype == np.float32
    np.testing.assert_allclose(factor, [160 / 240, 160 / 200])
    for ch in img:
        assert ch.min() >= 0.0 and ch.max() <= 1.0 and 0.4 < ch.mean() < 0.6
