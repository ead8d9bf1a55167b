"""The method's metrics (``Lib/metric.py:get_metrics``) per head, under the spec's keys.

``accuracy`` (exact, fused head), ``accuracy_within_one`` (|pred − truth| ≤ 1 class,
the method's ``acc_smooth``), ``binary_auc`` (ROC-AUC of P(≥ 2b) = the summed
probability of the successful classes, against truth ≥ 2b), ``accuracy_fused`` and
``accuracy_frontal``/``accuracy_lateral`` (each head alone), ``accuracy_best_single_view``
(the better of the two), ``fusion_gain`` (fused − best single view), macro F1 and the
method's micro-averaged one-vs-rest AUC.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from ai.mtici.labels import CLASS_NAMES, successful_classes


def _auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    if len(np.unique(truth)) < 2:
        return None  # undefined on one class; reported as null, not as a number
    return float(roc_auc_score(truth, score))


def grade_metrics(
    probabilities: Mapping[str, np.ndarray], labels: np.ndarray, mode: str = "4class"
) -> dict[str, Any]:
    """Metrics of the fused head and of each view head.

    Parameters
    ----------
    probabilities : mapping
        ``"fused"``, ``"frontal"``, ``"lateral"`` → (N, classes) probabilities.
    labels : (N,) int
        True class indices in ``mode``.
    """
    labels = np.asarray(labels)
    good = np.array(successful_classes(mode))
    truth_good = np.isin(labels, good).astype(int)
    n_classes = len(CLASS_NAMES[mode])
    out: dict[str, Any] = {}
    for head, probs in probabilities.items():
        pred = probs.argmax(axis=1)
        out[f"accuracy_{head}"] = float((pred == labels).mean())
        out[f"accuracy_within_one_{head}"] = float((np.abs(pred - labels) <= 1).mean())
        out[f"binary_auc_{head}"] = _auc(truth_good, probs[:, good].sum(axis=1))
        out[f"macro_f1_{head}"] = float(
            f1_score(labels, pred, average="macro", labels=list(range(n_classes)), zero_division=0)
        )
        onehot = np.eye(n_classes)[labels]
        out[f"micro_auc_{head}"] = _auc(onehot.ravel(), probs.ravel())
    out["accuracy"] = out["accuracy_fused"]
    out["accuracy_within_one"] = out["accuracy_within_one_fused"]
    out["binary_auc"] = out["binary_auc_fused"]
    views = [k for k in ("frontal", "lateral") if f"accuracy_{k}" in out]
    if views:
        best = max(out[f"accuracy_{v}"] for v in views)
        out["accuracy_best_single_view"] = best
        out["fusion_gain"] = out["accuracy_fused"] - best
    out["n"] = len(labels)
    return out
