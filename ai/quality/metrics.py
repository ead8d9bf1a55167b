"""The paper's metrics: per-label ROC-AUC (macro one-vs-rest for multi-class labels).

CLAIRE-DSA reports ROC-AUC per label (0.91–0.98) and macro AUC for the projection
(0.94).  Computed with MONAI's ``compute_roc_auc``; accuracy (argmax) is added for
people reading ``dicomnode evaluate``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc


def label_metrics(predictions: Sequence[Mapping[str, Mapping[str, float]]],
                  truth: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """``{"auc": {label: AUC}, "accuracy": {label: acc}, "n_rated": {label: n}}``.

    ``predictions[i][label]`` maps class name → probability; ``truth[i][label]`` is a
    class name (absent = not rated, skipped).  An AUC that cannot be computed (one
    class only among the rated samples) is None.
    """
    auc: dict[str, float | None] = {}
    acc: dict[str, float | None] = {}
    rated: dict[str, int] = {}
    if not predictions:
        return {"auc": auc, "accuracy": acc, "n_rated": rated}
    for name, classes_probs in predictions[0].items():
        classes = list(classes_probs)
        rows = [(p[name], t[name]) for p, t in zip(predictions, truth, strict=True)
                if t.get(name) in classes]
        rated[name] = len(rows)
        if not rows:
            auc[name] = acc[name] = None
            continue
        y_pred = np.array([[p[c] for c in classes] for p, _ in rows], dtype=np.float64)
        y = np.array([classes.index(t) for _, t in rows])
        acc[name] = round(float((y_pred.argmax(1) == y).mean()), 4)
        auc[name] = _auc(y_pred, y, len(classes))
    return {"auc": auc, "accuracy": acc, "n_rated": rated}


def _auc(y_pred: np.ndarray, y: np.ndarray, k: int) -> float | None:
    present = np.unique(y)
    if len(present) < 2:
        return None
    if k == 2:
        value = compute_roc_auc(torch.as_tensor(y_pred[:, 1]), torch.as_tensor(y))
    else:
        # Macro one-vs-rest over the classes present (an absent class has no AUC).
        onehot = np.eye(k)[y][:, present]
        value = compute_roc_auc(torch.as_tensor(y_pred[:, present]), torch.as_tensor(onehot),
                                average="macro")
    value = float(value)  # type: ignore[arg-type]
    return None if math.isnan(value) else round(value, 4)
