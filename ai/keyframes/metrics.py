"""The metrics STA-IPCon reports (``methods-notes.md`` §2.4).

* ``average_deviation_frames``: per run (|d_start| + |d_apex| + |d_end|) / 3 in frames,
  averaged over runs.
* ``frame_f1``: per run, ground truth and prediction become frame label vectors
  (0 background, 1 rise = [start, apex), 2 fall = [apex, end), as the method's
  evaluation builds them); scikit-learn's macro F1 over the labels present, averaged
  over runs.
* ``map_tiou_0.3_0.7``: ActivityNet detection AP per class (filling, wash-out) at
  tIoU 0.3, 0.4, …, 0.7, averaged over the two classes and then over thresholds; every
  scored segment the decoder kept takes part, ranked by score across runs.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

logger = logging.getLogger(__name__)

TIOU_THRESHOLDS = np.linspace(0.3, 0.7, 5)


def frame_labels(start: int, apex: int, end: int, num_frames: int) -> np.ndarray:
    """(T,) labels: 1 on [start, apex), 2 on [apex, end), 0 elsewhere (0-based frames)."""
    out = np.zeros(num_frames, np.int64)
    out[max(start, 0):max(apex, 0)] = 1
    out[max(apex, 0):max(end, 0)] = 2
    return out


def segment_iou(segment: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Temporal IoU of one [start, end] with each row of ``candidates`` (K, 2)."""
    inter = np.clip(np.minimum(segment[1], candidates[:, 1])
                    - np.maximum(segment[0], candidates[:, 0]), 0, None)
    union = (candidates[:, 1] - candidates[:, 0]) + (segment[1] - segment[0]) - inter
    return inter / np.maximum(union, 1e-9)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC / ActivityNet AP: area under the monotone precision envelope."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision(gt: Sequence[tuple[str, np.ndarray]],
                      pred: Sequence[tuple[str, np.ndarray, float]],
                      thresholds: np.ndarray = TIOU_THRESHOLDS) -> np.ndarray:
    """AP of one class at each tIoU threshold.

    ``gt``: (run id, [start, end]); ``pred``: (run id, [start, end], score).  A prediction
    is a true positive if it overlaps a not-yet-matched ground truth of its run by at
    least the threshold (the best-overlapping one is taken first).
    """
    ap = np.zeros(len(thresholds))
    if not gt or not pred:
        return ap
    by_run: dict[str, list[int]] = {}
    for i, (rid, _) in enumerate(gt):
        by_run.setdefault(rid, []).append(i)
    order = np.argsort([-p[2] for p in pred], kind="stable")
    tp = np.zeros((len(thresholds), len(pred)))
    fp = np.zeros((len(thresholds), len(pred)))
    used = np.zeros((len(thresholds), len(gt)), bool)
    gt_segs = np.array([g[1] for g in gt], np.float64)
    for rank, k in enumerate(order):
        rid, seg, _ = pred[k]
        cand = by_run.get(rid, [])
        if not cand:
            fp[:, rank] = 1
            continue
        ious = segment_iou(np.asarray(seg, np.float64), gt_segs[cand])
        best_first = np.argsort(-ious, kind="stable")
        for ti, thr in enumerate(thresholds):
            matched = False
            for j in best_first:
                if ious[j] < thr:
                    break
                if not used[ti, cand[j]]:
                    used[ti, cand[j]] = matched = True
                    break
            tp[ti, rank], fp[ti, rank] = (1, 0) if matched else (0, 1)
    for ti in range(len(thresholds)):
        ctp, cfp = np.cumsum(tp[ti]), np.cumsum(fp[ti])
        recall = ctp / len(gt)
        precision = ctp / np.maximum(ctp + cfp, 1e-12)
        ap[ti] = interpolated_ap(precision, recall)
    return ap


def keyframe_metrics(predictions: Sequence[Mapping[str, Any]],
                     truth: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """All metrics of a set of runs.

    Parameters
    ----------
    predictions : sequence of mapping
        ``keyframes`` (start, apex, end) 0-based, and for mAP ``segments`` (K, 2),
        ``scores`` (K,), ``labels`` (K,) in frames.
    truth : sequence of mapping
        ``keyframes`` (start, apex, end) 0-based and ``num_frames``.
    """
    if len(predictions) != len(truth):
        raise ValueError("one prediction per ground truth")
    dev, f1s, ps, rs = [], [], [], []
    gts: dict[int, list[tuple[str, np.ndarray]]] = {0: [], 1: []}
    preds: dict[int, list[tuple[str, np.ndarray, float]]] = {0: [], 1: []}
    for i, (p, t) in enumerate(zip(predictions, truth, strict=True)):
        ps_, pa, pe = (int(v) for v in p["keyframes"])
        ts, ta, te = (int(v) for v in t["keyframes"])
        dev.append((abs(ps_ - ts) + abs(pa - ta) + abs(pe - te)) / 3.0)
        n = int(t["num_frames"])
        y_true, y_pred = frame_labels(ts, ta, te, n), frame_labels(ps_, pa, pe, n)
        f1s.append(f1_score(y_true, y_pred, average="macro", zero_division=0))
        ps.append(precision_score(y_true, y_pred, average="macro", zero_division=0))
        rs.append(recall_score(y_true, y_pred, average="macro", zero_division=0))
        rid = str(t.get("run_id", i))
        gts[0].append((rid, np.array([ts, ta], np.float64)))
        gts[1].append((rid, np.array([ta, te], np.float64)))
        segs = np.asarray(p.get("segments", np.zeros((0, 2))), np.float64).reshape(-1, 2)
        scores = np.asarray(p.get("scores", np.zeros(0)), np.float64)
        labels = np.asarray(p.get("labels", np.zeros(0)), np.int64)
        for seg, sc, lab in zip(segs, scores, labels, strict=True):
            if int(lab) in preds:
                preds[int(lab)].append((rid, seg, float(sc)))
    ap = np.stack([average_precision(gts[c], preds[c]) for c in (0, 1)])  # (2, thresholds)
    per_tiou = ap.mean(axis=0)
    return {
        "average_deviation_frames": round(float(np.mean(dev)), 4) if dev else float("nan"),
        "frame_f1": round(float(np.mean(f1s)), 4) if f1s else float("nan"),
        "frame_precision": round(float(np.mean(ps)), 4) if ps else float("nan"),
        "frame_recall": round(float(np.mean(rs)), 4) if rs else float("nan"),
        "map_tiou_0.3_0.7": round(float(per_tiou.mean()), 4),
        "map_per_tiou": {f"{thr:.1f}": round(float(v), 4)
                         for thr, v in zip(TIOU_THRESHOLDS, per_tiou, strict=True)},
        "n": len(truth),
    }
