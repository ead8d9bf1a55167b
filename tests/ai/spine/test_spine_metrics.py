"""Metrics: CCF-Net's 6 mm recall × AUC and the challenge's 8 mm macro-F1, by hand."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from ai.spine.metrics import SpineTruth, spine_metrics

TAGS = ("v1", "v2", "v1", "v2", "v1", "v1", "v2", "v3", "v1,v5", "v4", "v2")


@dataclass
class Pred:
    coords: np.ndarray
    prob_abnormal: np.ndarray
    tags: tuple[str, ...]


def _truth(tags: tuple[str, ...] = TAGS) -> SpineTruth:
    coords = np.stack([np.full(11, 60.0), np.linspace(20, 140, 11)], axis=1)
    return SpineTruth(coords=coords, tags=tags, pixel_spacing=(1.0, 1.25))


def _perfect(t: SpineTruth) -> Pred:
    p = np.array([0.9 if tag.split(",")[0] != "v1" else 0.1 for tag in t.tags])
    return Pred(t.coords.copy(), p, t.tags)


def test_perfect_predictions_score_one() -> None:
    t = _truth()
    m = spine_metrics([_perfect(t)], [t])
    assert m["loc_recall_6mm"] == 1.0
    assert m["auc_disc"] == 1.0 and m["auc_vertebra"] == 1.0
    assert m["score"] == 1.0
    assert m["macro_f1_8mm"] == pytest.approx(1.0, abs=1e-4)
    assert m["mean_distance_mm"] == 0.0


def test_distance_uses_column_and_row_spacing() -> None:
    t = _truth()
    p = _perfect(t)
    # 5 columns × 1.25 mm = 6.25 mm: outside 6 mm, inside 8 mm.
    p.coords[:, 0] += 5.0
    m = spine_metrics([p], [t])
    assert m["loc_recall_6mm"] == 0.0
    assert math.isnan(m["auc_disc"])  # no localised point: no AUC, not a made-up one
    assert m["macro_f1_8mm"] == pytest.approx(1.0, abs=1e-4)
    # 6 rows × 1.0 mm = 6.0 mm: inside 6 mm (the repo's ≤).
    p = _perfect(t)
    p.coords[:, 1] += 6.0
    assert spine_metrics([p], [t])["loc_recall_6mm"] == 1.0


def test_score_is_mean_recall_times_mean_auc() -> None:
    t = _truth()
    p = _perfect(t)
    p.coords[0, 1] += 20.0  # lose one vertebra (L1, v1): vertebra recall 4/5
    p.prob_abnormal[5] = 0.95  # a normal disc ranked above every abnormal one
    m = spine_metrics([p], [t])
    assert m["loc_recall_6mm_vertebra"] == pytest.approx(0.8)
    assert m["loc_recall_6mm_disc"] == 1.0
    # Discs: abnormal = L1-L2 (v2), L2-L3 (v3), L4-L5 (v4), L5-S1 (v2); normal = T12-L1,
    # L3-L4 (v1,v5).  T12-L1 now outranks all four positives: AUC = 4/8.
    assert m["auc_disc"] == pytest.approx(0.5)
    assert m["auc_vertebra"] == 1.0
    assert m["score"] == pytest.approx(0.9 * 0.75)


def test_challenge_f1_counts_a_wrong_grade_as_false_positive() -> None:
    t = _truth()
    p = _perfect(t)
    tags = list(t.tags)
    tags[7] = "v2"  # L2-L3 is v3: near but wrong → FP for "disc v3", nothing else changes
    p.tags = tuple(tags)
    m = spine_metrics([p], [t])
    f1 = m["f1_8mm_by_class"]
    assert f1["disc v3"] == pytest.approx(0.0, abs=1e-3)
    assert f1["disc v2"] == pytest.approx(1.0, abs=1e-3)
    assert m["macro_f1_8mm"] == pytest.approx(5 / 6, abs=1e-3)  # 6 classes present


def test_missing_landmarks_are_not_counted() -> None:
    tags = list(TAGS)
    tags[3] = ""
    t = _truth(tuple(tags))
    t.coords[3] = np.nan
    m = spine_metrics([_perfect(_truth())], [t])
    assert m["n_landmarks"] == 10 and m["loc_recall_6mm"] == 1.0
