"""ActionFormer-style targets, losses and decoding for the two contrast segments.

``methods-notes.md`` §2.2: every pyramid point inside the centre region (1.5 strides)
of a ground-truth segment whose length fits the level's regression range is a positive
of that segment's class and regresses its distances to both boundaries (in strides).
Loss = sigmoid focal loss (MONAI ``FocalLoss``, alpha 0.25, gamma 2, summed) + centre
DIoU 1-D loss on positives, both divided by the number of positives, + the image-wise
contrastive loss of STA-IPCon.  Decoding keeps candidate segments above a score
threshold, applies Gaussian soft-NMS per class and reads the keyframes off the best
filling (class 0) and wash-out (class 1) segments: start = filling start, apex = the
mean of filling end and wash-out start, end = wash-out end (``setting 0``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import FocalLoss

logger = logging.getLogger(__name__)

CENTER_RADIUS = 1.5
_FOCAL = FocalLoss(include_background=True, to_onehot_y=False, gamma=2.0, alpha=0.25,
                   use_softmax=False, reduction="sum")


def assign_targets(points: torch.Tensor, segments: torch.Tensor, labels: torch.Tensor,
                   num_classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Class targets (P, C) and normalised offsets (P, 2) of one run.

    Parameters
    ----------
    points : torch.Tensor
        (P, 4): time, regression range low / high, stride (``KeyframesNet.points``).
    segments : torch.Tensor
        (N, 2) ground-truth [start, end] in frames.
    labels : torch.Tensor
        (N,) class of each segment.
    """
    p, n = points.shape[0], segments.shape[0]
    t, lo, hi, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3], points[:, 3:4]
    left = t - segments[None, :, 0]
    right = segments[None, :, 1] - t
    centre = 0.5 * (segments[None, :, 0] + segments[None, :, 1])
    # Centre sampling: only points within 1.5 strides of the centre (and inside) count.
    c_left = t - torch.maximum(centre - stride * CENTER_RADIUS, segments[None, :, 0])
    c_right = torch.minimum(centre + stride * CENTER_RADIUS, segments[None, :, 1]) - t
    inside = torch.minimum(c_left, c_right) >= 0
    reach = torch.maximum(left, right)
    in_range = (reach >= lo) & (reach <= hi)
    lengths = (segments[:, 1] - segments[:, 0])[None].expand(p, n).clone()
    lengths[~(inside & in_range)] = float("inf")
    best_len, best = lengths.min(dim=1)
    positive = torch.isfinite(best_len)
    cls = torch.zeros(p, num_classes, device=points.device)
    cls[positive, labels[best[positive]]] = 1.0
    idx = torch.arange(p, device=points.device)
    offsets = torch.stack([left[idx, best], right[idx, best]], dim=1) / stride
    return cls, offsets * positive[:, None]


def diou_loss_1d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Centre-DIoU loss of 1-D segments given as (left, right) distances from a point.

    1 - IoU + (centre distance / enclosing length)^2, summed (ActionFormer's
    ``ctr_diou_loss_1d``).
    """
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = lp + rp + lg + rg - inter
    iou = inter / union.clamp_min(1e-6)
    enclose = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    rho = 0.5 * ((rp - lp) - (rg - lg))
    return (1.0 - iou + (rho / enclose.clamp_min(1e-6)) ** 2).sum()


def contrastive_loss(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """STA-IPCon's image-wise contrastive loss over anchors near the apex.

    ``fg`` (N, d) foreground and ``bg`` (N, d) background embeddings;
    L = mean_i -log(S_pos / (S_pos + S_neg)), S_pos = sum_{j != i} exp(cos(u_i, u_j)),
    S_neg = sum_j exp(cos(u_i, d_j)).
    """
    u, d = F.normalize(fg, dim=1), F.normalize(bg, dim=1)
    pos = torch.exp(u @ u.T)
    s_pos = pos.sum(dim=1) - torch.diagonal(pos)
    s_neg = torch.exp(u @ d.T).sum(dim=1)
    return -(torch.log(s_pos / (s_pos + s_neg))).mean()


def apex_anchor_frames(segments: torch.Tensor, labels: torch.Tensor,
                       generator: torch.Generator | None = None) -> list[int]:
    """One random frame per segment next to the apex (second half of filling,
    first half of wash-out), where the vessel foreground is most distinct."""
    frames = []
    for (s, e), lab in zip(segments.tolist(), labels.tolist(), strict=True):
        mid = 0.5 * (s + e)
        lo, hi = (mid, e) if lab == 0 else (s, mid)
        frames.append(int(round(lo + float(torch.rand(1, generator=generator)) * (hi - lo))))
    return frames


def detection_loss(outputs: Mapping[str, Any], points: torch.Tensor,
                   segments: torch.Tensor, labels: torch.Tensor,
                   contrast_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Focal + DIoU (+ contrastive) loss of a batch.

    ``segments`` (B, N, 2) and ``labels`` (B, N); ``outputs`` from ``KeyframesNet``.
    """
    logits = torch.cat(outputs["logits"], dim=1)  # (B, P, C)
    offsets = torch.cat(outputs["offsets"], dim=1)  # (B, P, 2)
    valid = torch.cat(outputs["masks"], dim=1)  # (B, P)
    targets = [assign_targets(points, s, lab, logits.shape[-1]) for s, lab in
               zip(segments, labels, strict=True)]
    gt_cls = torch.stack([c for c, _ in targets])
    gt_off = torch.stack([o for _, o in targets])
    positive = (gt_cls.sum(-1) > 0) & valid
    norm = max(int(positive.sum()), 1)
    cls_loss = _FOCAL(logits[valid].T[None], gt_cls[valid].T[None]) / norm
    if positive.any():
        reg_loss = diou_loss_1d(offsets[positive], gt_off[positive]) / norm
    else:
        reg_loss = offsets.sum() * 0.0
    losses = {"cls": cls_loss, "reg": reg_loss}
    if contrast_weight > 0:
        idx_b, idx_t = [], []
        for b, (s, lab) in enumerate(zip(segments, labels, strict=True)):
            for t in apex_anchor_frames(s, lab):
                idx_b.append(b)
                idx_t.append(t)
        fg = outputs["fg"][idx_b, idx_t]
        bg = outputs["bg"][idx_b, idx_t]
        losses["contrast"] = contrast_weight * contrastive_loss(fg, bg)
    losses["total"] = sum(losses.values(), torch.zeros((), device=logits.device))
    return losses


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


@dataclass
class Detection:
    """Segments of one run (frames, 0-based) and the keyframes read off them."""

    segments: np.ndarray  # (K, 2)
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,)
    start: int = 0
    apex: int = 0
    end: int = 0
    confidences: tuple[float, float, float] = (0.0, 0.0, 0.0)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def keyframes(self) -> tuple[int, int, int]:
        """(start, apex, end), 0-based."""
        return (self.start, self.apex, self.end)


def soft_nms(segments: np.ndarray, scores: np.ndarray, sigma: float = 0.5,
             min_score: float = 1e-3, max_keep: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS of 1-D segments: each pick decays overlapping scores."""
    segs, sc = segments.copy(), scores.copy()
    keep_s: list[np.ndarray] = []
    keep_c: list[float] = []
    while len(sc) and len(keep_c) < max_keep:
        i = int(np.argmax(sc))
        if sc[i] < min_score:
            break
        keep_s.append(segs[i])
        keep_c.append(sc[i])
        inter = np.clip(np.minimum(segs[:, 1], segs[i, 1]) - np.maximum(segs[:, 0], segs[i, 0]),
                        0, None)
        union = (segs[:, 1] - segs[:, 0]) + (segs[i, 1] - segs[i, 0]) - inter
        iou = inter / np.maximum(union, 1e-6)
        sc = sc * np.exp(-(iou ** 2) / sigma)
        sc[i] = -1.0
    if not keep_c:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(keep_s).astype(np.float32), np.asarray(keep_c, np.float32)


def vote_boundaries(top: np.ndarray, candidates: np.ndarray, scores: np.ndarray,
                    thresh: float, power: float) -> np.ndarray:
    """Refine the boundaries of ``top`` by the candidates that overlap it.

    ActionFormer's voting: the score-weighted mean (weights ``score ** power``) of every
    candidate segment whose tIoU with ``top`` is at least ``thresh`` (``top`` itself is
    one of them).  The pyramid's neighbouring points each regress the same boundary;
    their mean is steadier than the single best one.
    """
    if len(candidates) == 0:
        return top
    inter = np.clip(np.minimum(top[1], candidates[:, 1]) - np.maximum(top[0], candidates[:, 0]),
                    0, None)
    union = (candidates[:, 1] - candidates[:, 0]) + (top[1] - top[0]) - inter
    weights = (scores.astype(np.float64) ** power) * (inter / np.maximum(union, 1e-6) >= thresh)
    if weights.sum() <= 0:
        return top
    return (candidates * weights[:, None]).sum(0) / weights.sum()


def consistent_pair(fill: tuple[np.ndarray, np.ndarray], wash: tuple[np.ndarray, np.ndarray],
                    topk: int) -> tuple[int, int]:
    """Indices of the filling and wash-out segments to read the keyframes from.

    Contrast fills before it washes out: among the ``topk`` best of each class (sorted
    by score, as soft-NMS returns them) the pair with the highest score product whose
    filling starts and ends no later than the wash-out does.  Without such a pair, the
    two best.
    """
    best, pick = -1.0, (0, 0)
    for i in range(min(topk, len(fill[1]))):
        for j in range(min(topk, len(wash[1]))):
            f, w = fill[0][i], wash[0][j]
            if f[0] <= w[0] and f[1] <= w[1] and fill[1][i] * wash[1][j] > best:
                best, pick = float(fill[1][i] * wash[1][j]), (i, j)
    return pick


def decode_run(logits: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
               masks: Sequence[torch.Tensor], points: torch.Tensor, num_frames: int,
               pre_nms_thresh: float = 1e-3, pre_nms_topk: int = 2000,
               voting_thresh: float | None = None, voting_power: float = 2.0,
               pair_topk: int = 1) -> Detection:
    """Keyframes of one run from per-level outputs (each (T_l, C), (T_l, 2), (T_l,)).

    The filling and wash-out segments the keyframes are read from are the best-scoring
    pair in temporal order among the top ``pair_topk`` of each class
    (:func:`consistent_pair`; 1 = each class's best, whatever the order).  With
    ``voting_thresh`` the best segment of each class has its boundaries refined by
    :func:`vote_boundaries` before the keyframes are read off; the scored segment list
    (what the detection mAP ranks) is the soft-NMS output either way.
    """
    lg = torch.cat(list(logits)).float()
    off = torch.cat(list(offsets)).float()
    valid = torch.cat(list(masks))
    scores = torch.sigmoid(lg) * valid[:, None]
    flat = scores.flatten()
    k = min(pre_nms_topk, int((flat > pre_nms_thresh).sum()))
    k = max(k, 2)
    top, idx = flat.topk(min(k, flat.numel()))
    pt, cls = idx // scores.shape[1], idx % scores.shape[1]
    t, stride = points[pt, 0], points[pt, 3]
    seg = torch.stack([t - off[pt, 0] * stride, t + off[pt, 1] * stride],
                      dim=1).clamp(0, num_frames - 1).cpu().numpy()
    top_np, cls_np = top.cpu().numpy(), cls.cpu().numpy()
    all_s, all_c, all_l = [], [], []
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in range(scores.shape[1]):
        sel = cls_np == c
        s, sc = soft_nms(seg[sel], top_np[sel])
        all_s.append(s)
        all_c.append(sc)
        all_l.append(np.full(len(sc), c))
        if not len(sc):  # no candidate: fall back to the best-scoring point of that class
            j = int(torch.argmax(scores[:, c]))
            tj, sj = float(points[j, 0]), float(points[j, 3])
            s = np.array([[tj - float(off[j, 0]) * sj, tj + float(off[j, 1]) * sj]])
            sc = np.array([float(scores[j, c])])
        kept[c] = (s, sc)
    i, j = consistent_pair(kept[0], kept[1], pair_topk)
    fill, c0 = kept[0][0][i], float(kept[0][1][i])
    wash, c1 = kept[1][0][j], float(kept[1][1][j])
    if voting_thresh is not None:
        fill = vote_boundaries(fill, seg[cls_np == 0], top_np[cls_np == 0], voting_thresh,
                               voting_power)
        wash = vote_boundaries(wash, seg[cls_np == 1], top_np[cls_np == 1], voting_thresh,
                               voting_power)
    start = float(fill[0])
    apex = 0.5 * (float(fill[1]) + float(wash[0]))
    end = float(wash[1])
    s_i, a_i, e_i = (int(np.clip(round(v), 0, num_frames - 1)) for v in (start, apex, end))
    a_i = min(max(a_i, s_i), num_frames - 1)
    e_i = max(e_i, a_i)
    return Detection(
        segments=np.concatenate(all_s) if all_s else np.zeros((0, 2), np.float32),
        scores=np.concatenate(all_c) if all_c else np.zeros(0, np.float32),
        labels=np.concatenate(all_l) if all_l else np.zeros(0, np.int64),
        start=s_i, apex=a_i, end=e_i,
        confidences=(c0, float(np.sqrt(max(c0, 0.0) * max(c1, 0.0))), c1),
    )


def opacification_apex(curve: np.ndarray, start: int, end: int) -> int:
    """Frame of the most opacified vessel between ``start`` and ``end`` (0-based).

    ``curve`` is the vessel maps' sum per frame, smoothed over 3 frames.  The whole
    tree peaks after the ostium does (distal filling delay), so this is a second,
    biased estimate of the apex that :func:`blend_apex` weighs against the segments'.
    """
    c = np.convolve(np.asarray(curve, np.float64), np.ones(3) / 3.0, mode="same")
    if end <= start:
        return int(np.argmax(c))
    return start + int(np.argmax(c[start:end + 1]))


def blend_apex(det: Detection, curve: np.ndarray, blend: Mapping[str, float]) -> Detection:
    """The apex as ``segment * a + curve * b + bias`` (clipped to [start, end]).

    ``blend`` (``{"segment", "curve", "bias"}``) is fitted by least squares on held-out
    runs (:mod:`ai.keyframes.calibrate`) and saved in the model's decoding config.
    """
    s, a, e = det.keyframes
    curve_apex = opacification_apex(curve, s, e)
    value = (float(blend["segment"]) * a + float(blend["curve"]) * curve_apex
             + float(blend["bias"]))
    apex = int(np.clip(round(value), s, max(s, e)))
    info = {**det.info, "apex_segment": a, "apex_curve": curve_apex}
    return replace(det, apex=apex, info=info)
