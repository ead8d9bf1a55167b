"""keyframes decoding: the filling/wash-out pair in temporal order, boundary voting."""
from __future__ import annotations

import numpy as np
import torch

from ai.keyframes.calibrate import fit_blend
from ai.keyframes.detection import (
    Detection,
    blend_apex,
    consistent_pair,
    decode_run,
    opacification_apex,
    vote_boundaries,
)


def test_the_pair_read_is_the_best_one_in_which_filling_comes_first() -> None:
    fill = (np.array([[50.0, 60.0], [10.0, 20.0]]), np.array([0.9, 0.6]))
    wash = (np.array([[20.0, 40.0], [5.0, 8.0]]), np.array([0.8, 0.7]))
    # The two best (0.9 x 0.8) put the filling after the wash-out; 0.6 x 0.8 is in order.
    assert consistent_pair(fill, wash, topk=10) == (1, 0)
    assert consistent_pair(fill, wash, topk=1) == (0, 0)  # nothing in order: the best two


def test_voting_averages_the_overlapping_candidates_by_score_squared() -> None:
    top = np.array([10.0, 20.0])
    cands = np.array([[10.0, 20.0], [12.0, 22.0], [40.0, 50.0]])
    scores = np.array([0.5, 0.5, 1.0])  # the far one does not overlap: no vote
    assert np.allclose(vote_boundaries(top, cands, scores, 0.6, 2.0), [11.0, 21.0])
    # Weights are score ** power: a 2:1 score is a 4:1 vote.
    got = vote_boundaries(top, cands[:2], np.array([1.0, 0.5]), 0.6, 2.0)
    assert np.allclose(got, [10.4, 20.4])


def _outputs(t: int, fill: tuple[float, float, float], wash: tuple[float, float, float]
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """One pyramid level of stride 1 where frame ``c`` of each (c, start, end) segment
    scores 0.9 and regresses that segment's boundaries; elsewhere nothing scores."""
    logits = torch.full((t, 2), -20.0)
    offsets = torch.zeros(t, 2)
    for k, (c, a, b) in enumerate((fill, wash)):
        logits[int(c), k] = 2.2
        offsets[int(c)] = torch.tensor([c - a, b - c])
    points = torch.stack([torch.arange(t, dtype=torch.float32), torch.zeros(t),
                          torch.full((t,), 1e4), torch.ones(t)], dim=1)
    return [logits], [offsets], [torch.ones(t, dtype=torch.bool)], points


def test_decoding_reads_start_apex_end_off_the_two_segments() -> None:
    logits, offsets, masks, points = _outputs(60, (15, 10, 20), (30, 20, 40))
    det = decode_run(logits, offsets, masks, points, 60, voting_thresh=0.6, pair_topk=10)
    assert det.keyframes == (10, 20, 40)
    assert 0.85 < det.confidences[0] < 0.95


def test_opacification_apex_is_the_smoothed_peak_between_start_and_end() -> None:
    curve = np.zeros(40)
    curve[24:27] = [150.0, 300.0, 150.0]  # smoothed over 3 frames: 200 at frame 25
    curve[10:14] = 60.0        # a broad plateau before it: smoothed, 60 at most
    assert opacification_apex(curve, 5, 30) == 25
    assert opacification_apex(curve, 5, 20) in (11, 12)  # the peak inside the range


def test_blend_apex_weighs_the_two_estimates_and_stays_between_start_and_end() -> None:
    det = Detection(segments=np.zeros((0, 2)), scores=np.zeros(0), labels=np.zeros(0),
                    start=10, apex=20, end=40)
    curve = np.zeros(50)
    curve[29:32] = [0.5, 1.0, 0.5]
    got = blend_apex(det, curve, {"segment": 0.5, "curve": 0.5, "bias": -1.0})
    assert (got.start, got.apex, got.end) == (10, 24, 40)  # 0.5*20 + 0.5*30 - 1
    assert got.info["apex_segment"] == 20 and got.info["apex_curve"] == 30
    late = blend_apex(det, curve, {"segment": 0.0, "curve": 2.0, "bias": 0.0})
    assert late.apex == 40  # clipped to the end


def test_fit_blend_recovers_known_weights() -> None:
    rng = np.random.default_rng(0)
    seg, cur = rng.uniform(10, 60, 200), rng.uniform(10, 60, 200)
    rows = np.c_[seg, cur, 0.3 * seg + 0.6 * cur - 2.0]
    assert fit_blend(rows) == {"segment": 0.3, "curve": 0.6, "bias": -2.0}
