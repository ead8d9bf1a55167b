"""CCF-Net's metrics (6 mm recall × AUC) and the Tianchi challenge's 8 mm macro-F1.

CCF-Net (``compute_my_metric_prob``, methods-notes §3.4): a landmark is localised when
its prediction lies within 6 mm of the truth (distance in mm through ``PixelSpacing``);
L-Disc and L-Vertebra are the localisation recalls; C-Disc and C-Vertebra the ROC-AUC of
the binary probability over the localised points (disc v1 vs the rest, vertebra v1 vs
v2); Score = mean(L) × mean(C).

Challenge (the Tianchi ``Evaluator``): per class "disc v1" … "vertebra v2" (keyed by the
first two characters of the true tag), a prediction within 8 mm is a true positive when
its tag equals that class, a false positive when it does not; one farther away is a
false negative.  Each count starts at ε = 1e-5; the ranking is the macro F1 over classes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ai.spine.labels import N_LANDMARKS, is_abnormal, is_disc, primary_tag

LOC_MM = 6.0
CHALLENGE_MM = 8.0
EPSILON = 1e-5


@dataclass(frozen=True)
class SpineTruth:
    """What the metrics need of a sample: landmarks, tags and pixel spacing (row, col)."""

    coords: np.ndarray
    tags: tuple[str, ...]
    pixel_spacing: tuple[float, float]


def distances_mm(pred: np.ndarray, truth: SpineTruth) -> np.ndarray:
    """(11,) distance in mm of each predicted landmark to the truth (NaN where missing)."""
    row_mm, col_mm = truth.pixel_spacing
    d = pred - truth.coords
    return np.sqrt((d[:, 0] * col_mm) ** 2 + (d[:, 1] * row_mm) ** 2)


def _auc(y: list[int], p: list[float]) -> float:
    # AUC is undefined with one class present; report NaN rather than a made-up number.
    if len(set(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, p))


def spine_metrics(predictions: Sequence[Any], truth: Sequence[SpineTruth],
                  loc_mm: float = LOC_MM, challenge_mm: float = CHALLENGE_MM) -> dict[str, Any]:
    """All metric keys of ``modules.md`` except ``inference_s_per_case``.

    Parameters
    ----------
    predictions : sequence of SpinePrediction
        ``coords`` (11, 2) on the key slice, ``prob_abnormal`` (11,), ``tags``.
    truth : sequence of SpineTruth

    Returns
    -------
    dict
        ``loc_recall_6mm`` (all landmarks) with ``loc_recall_6mm_disc`` and
        ``loc_recall_6mm_vertebra``; ``auc_disc``, ``auc_vertebra``; ``score`` =
        mean(L) × mean(C); ``macro_f1_8mm`` with its per-class F1 in
        ``f1_8mm_by_class``; ``mean_distance_mm``; ``n_landmarks``.
    """
    hits = {"disc": [], "vertebra": []}  # type: dict[str, list[bool]]
    ys = {"disc": [], "vertebra": []}  # type: dict[str, list[int]]
    ps = {"disc": [], "vertebra": []}  # type: dict[str, list[float]]
    tp: dict[str, float] = {}
    fp: dict[str, float] = {}
    fn: dict[str, float] = {}
    all_d: list[float] = []
    for pred, gt in zip(predictions, truth, strict=True):
        d = distances_mm(np.asarray(pred.coords, dtype=np.float64), gt)
        for i in range(N_LANDMARKS):
            if not gt.tags[i] or not np.isfinite(d[i]):
                continue
            kind = "disc" if is_disc(i) else "vertebra"
            all_d.append(float(d[i]))
            near = bool(d[i] <= loc_mm)
            hits[kind].append(near)
            if near:
                ys[kind].append(int(is_abnormal(gt.tags[i])))
                ps[kind].append(float(pred.prob_abnormal[i]))
            cls = f"{kind} {primary_tag(gt.tags[i])}"
            for table in (tp, fp, fn):
                table.setdefault(cls, EPSILON)
            if d[i] < challenge_mm:
                # The submitted tag is the first one; the evaluator compares it to gt[:2].
                if primary_tag(pred.tags[i]) == primary_tag(gt.tags[i]):
                    tp[cls] += 1
                else:
                    fp[cls] += 1
            else:
                fn[cls] += 1
    loc = {k: float(np.mean(v)) if v else math.nan for k, v in hits.items()}
    auc = {k: _auc(ys[k], ps[k]) for k in ys}
    f1 = {}
    for cls in sorted(tp):
        precision = tp[cls] / (tp[cls] + fp[cls])
        recall = tp[cls] / (tp[cls] + fn[cls])
        f1[cls] = 2 * precision * recall / (precision + recall)
    n_hits = sum(len(v) for v in hits.values())
    return {
        "loc_recall_6mm": float(sum(sum(v) for v in hits.values()) / n_hits) if n_hits else
        math.nan,
        "loc_recall_6mm_disc": loc["disc"],
        "loc_recall_6mm_vertebra": loc["vertebra"],
        "auc_disc": auc["disc"],
        "auc_vertebra": auc["vertebra"],
        "score": float(np.mean([loc["disc"], loc["vertebra"]])
                       * np.mean([auc["disc"], auc["vertebra"]])),
        "macro_f1_8mm": float(np.mean(list(f1.values()))) if f1 else math.nan,
        "f1_8mm_by_class": {k: round(v, 4) for k, v in f1.items()},
        "mean_distance_mm": float(np.mean(all_d)) if all_d else math.nan,
        "n_landmarks": int(n_hits),
    }
