"""keyframes metrics against values computed by hand on a two-run case."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ai.keyframes.detection import assign_targets, diou_loss_1d, soft_nms
from ai.keyframes.metrics import frame_labels, keyframe_metrics, segment_iou

TRUTH = [
    {"run_id": "a", "keyframes": (2, 5, 8), "num_frames": 10},
    {"run_id": "b", "keyframes": (2, 5, 8), "num_frames": 10},
]
PREDICTIONS = [
    {"keyframes": (2, 5, 8),
     "segments": np.array([[6, 9], [2, 5], [5, 8]], float),
     "scores": np.array([0.95, 0.9, 0.9]), "labels": np.array([0, 0, 1])},
    {"keyframes": (3, 5, 9),
     "segments": np.array([[3, 5], [5, 9]], float),
     "scores": np.array([0.8, 0.7]), "labels": np.array([0, 1])},
]


def test_frame_labels_mark_rise_then_fall() -> None:
    assert frame_labels(2, 5, 8, 10).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 0, 0]
    assert frame_labels(3, 5, 9, 10).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]


def test_segment_iou_of_overlapping_segments() -> None:
    iou = segment_iou(np.array([2.0, 5.0]), np.array([[3.0, 5.0], [6.0, 9.0], [2.0, 5.0]]))
    np.testing.assert_allclose(iou, [2 / 3, 0.0, 1.0])


def test_metrics_match_hand_computed_values() -> None:
    m = keyframe_metrics(PREDICTIONS, TRUTH)
    # Deviation: run a 0, run b (1 + 0 + 1) / 3.
    assert m["average_deviation_frames"] == pytest.approx((0 + 2 / 3) / 2, abs=1e-4)
    # Run b per-class F1: background 3/4, rise 0.8 (P 1, R 2/3), fall 6/7 (P 3/4, R 1).
    f_b = (0.75 + 0.8 + 6 / 7) / 3
    assert m["frame_f1"] == pytest.approx((1.0 + f_b) / 2, abs=1e-4)
    # Rise AP: ranking FP(0.95), TP(0.9), b (tIoU 2/3): 2/3 up to tIoU 0.6, 0.25 at 0.7.
    # Fall AP: both wash-outs found (tIoU 1 and 3/4): 1 at every threshold.
    per_tiou = [(2 / 3 + 1) / 2] * 4 + [(0.25 + 1) / 2]
    assert m["map_per_tiou"]["0.3"] == pytest.approx(per_tiou[0], abs=1e-4)
    assert m["map_per_tiou"]["0.7"] == pytest.approx(per_tiou[4], abs=1e-4)
    assert m["map_tiou_0.3_0.7"] == pytest.approx(np.mean(per_tiou), abs=1e-4)


def test_perfect_predictions_score_perfectly() -> None:
    preds = [{"keyframes": t["keyframes"],
              "segments": np.array([t["keyframes"][:2], t["keyframes"][1:]], float),
              "scores": np.array([0.9, 0.8]), "labels": np.array([0, 1])} for t in TRUTH]
    m = keyframe_metrics(preds, TRUTH)
    assert m["average_deviation_frames"] == 0
    assert m["frame_f1"] == 1
    assert m["map_tiou_0.3_0.7"] == 1


def test_points_near_a_segment_centre_regress_its_boundaries() -> None:
    # Level 0 (stride 1, range 0-4) and level 1 (stride 2, range 4-8), one segment [10, 16].
    points = torch.tensor([[13.0, 0, 4, 1], [14.0, 0, 4, 1], [5.0, 0, 4, 1],
                           [12.0, 4, 8, 2], [14.0, 4, 8, 2]])
    cls, off = assign_targets(points, torch.tensor([[10.0, 16.0]]), torch.tensor([1]))
    # Farther boundary 3 (<= 4) at stride 1; 4 at the level-1 point 12 (6 - 2 = 4: reach 4).
    assert cls[:, 1].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert off[0].tolist() == [3.0, 3.0]
    assert off[3].tolist() == [1.0, 2.0]  # (12 - 10, 16 - 12) / stride 2
    assert cls[:, 0].sum() == 0


def test_diou_loss_is_zero_for_a_perfect_segment_and_grows_with_shift() -> None:
    target = torch.tensor([[3.0, 3.0]])
    assert float(diou_loss_1d(target, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(diou_loss_1d(torch.tensor([[2.0, 4.0]]), target)) > 0.1


def test_soft_nms_keeps_the_best_and_decays_its_duplicates() -> None:
    segs = np.array([[0.0, 10.0], [0.5, 10.0], [20.0, 30.0]])
    kept, scores = soft_nms(segs, np.array([0.9, 0.85, 0.5]))
    assert kept[0].tolist() == [0.0, 10.0]
    assert scores[0] == pytest.approx(0.9)
    # The near-duplicate (IoU 0.95) decays below the distinct segment.
    assert kept[1].tolist() == [20.0, 30.0]
