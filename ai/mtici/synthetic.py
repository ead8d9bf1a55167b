"""Synthetic dual-view DSA runs with an exactly known mTICI grade (methods-notes §1.6).

One case is one 3-D head: a cerebral vessel tree whose leaves own territories, an
occlusion of the superior M2 division, and a known set of reperfused leaves.  The
reperfused fraction ``r`` (perfused territory volume / downstream volume) fixes the
grade: r = 0 and no flow past the occlusion → 0; flow past it but no parenchymal
filling within the run → 1; 0.1 ≤ r < 0.5 → 2a; 0.5 ≤ r < 1 → 2b; r = 1 → 3.

Both views are projections of the same 3-D opacity: frontal (PositionerPrimaryAngle
0°) along the antero-posterior axis and lateral (90°) along the left-right axis.  Two
always-perfused territories overlap the downstream one in **one view only**:

* the inferior-division territory (temporal lobe, posterior and low) lies behind the
  downstream territory on the frontal view and beside it on the lateral view;
* the ACA territory (medial, anterior and high) lies beside it on the frontal view and
  over it on the lateral view.

The two overlays are complementary: the inferior one hides the lower part of the
downstream territory (below a random split height) on the frontal view, the ACA one
the upper part (from about that height up) on the lateral view.

A defect under an overlay is hidden (up to an intensity cue masked by random gains) in
that view and plain in the other, so one view alone is ambiguous and fusing both views
pays; :func:`apparent_grades` measures how often, from the geometry alone.

Everything is numpy: per-territory projections are computed once per case and mixed
with the time curves, so a 64×64 case takes a few tens of milliseconds.  Random draws
do not depend on the voxel grid (:func:`rerender`): training uses 64², ``dicomnode
synth`` writes the same cases at 256² (a few seconds each).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from ai.mtici.labels import CLASS_NAMES, class_index

#: Reperfused-fraction ranges sampled per grade.  They keep a margin from the grading
#: thresholds (0.1, 0.5, 1) the way a grader's "clear" cases do; the thresholds
#: themselves still decide the grade.
R_RANGES: dict[str, tuple[float, float]] = {
    "2a": (0.12, 0.45),
    "2b": (0.55, 0.94),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (defaults give the bundled model's training data).

    Parameters
    ----------
    size : int
        Edge of the voxel grid and of each projected frame, in pixels.
    frames : (int, int)
        Inclusive range of native frames per run.
    n_leaves : (int, int)
        Inclusive range of terminal branches in the downstream territory.
    overlay_gain : (float, float)
        Blush gain range of the view-specific overlapping territories; the wider and
        higher, the better they hide a defect beneath them.  At (8, 14) an overlay's
        column darkens the run to a few per cent at its peak, below the noise, so a
        defect under it is hidden in that view; at (2.5, 5) it was still visible
        through the overlay (800 training cases, 5 epochs, 200 held out: lateral
        head 0.81 → 0.78, fused 0.875 → 0.915).
    noise : (float, float)
        Range of the Gaussian noise standard deviation on the [0, 1] DSA scale.
    """

    size: int = 64
    frames: tuple[int, int] = (16, 24)
    n_leaves: tuple[int, int] = (9, 13)
    overlay_gain: tuple[float, float] = (8.0, 14.0)
    leaf_gain: tuple[float, float] = (0.6, 1.4)
    noise: tuple[float, float] = (0.01, 0.035)
    misregistration_px: int = 1  # in pixels of the 64² reference grid


@dataclass
class SyntheticCase:
    """One generated frontal + lateral pair and its ground truth.

    ``frontal`` and ``lateral`` are (T, H, W) float32 DSA frames in [0, ~1.2], vessels
    dark (1 = no contrast).  ``info`` carries the geometry-only ambiguity measures
    (``apparent_grade_frontal`` …) and the drawing parameters.
    """

    case_id: str
    grade: str
    reperfused_fraction: float
    frontal: np.ndarray
    lateral: np.ndarray
    frame_time_ms: float
    info: dict[str, Any] = field(default_factory=dict)

    def label(self, mode: str = "4class") -> int:
        """The class index of this case's grade in ``mode``."""
        return class_index(self.grade, mode)


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centre coordinates in [-1, 1]: x (left-right), y (anterior→posterior), z (up)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    return x, y, z


def _smooth_field(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """Low-frequency multiplicative texture 1 ± amplitude: a sum of three smooth 1-D
    profiles (separable, so it costs one broadcast instead of a 3-D filter)."""
    knots = np.linspace(0, size - 1, 6)
    axis = np.arange(size)
    f = [np.interp(axis, knots, rng.uniform(-1.0, 1.0, 6)).astype(np.float32) for _ in range(3)]
    return 1.0 + amplitude / 3.0 * (f[0][:, None, None] + f[1][None, :, None] + f[2][None, None, :])


@dataclass
class _Tree:
    """A vessel tree as nodes (3-D points) and parent links; leaves map to territories."""

    points: list[np.ndarray]
    parent: list[int]
    radius: list[float]
    leaf_of: dict[int, int]  # node -> territory label of the leaf it feeds
    territory_nodes: dict[int, list[int]]  # territory label -> its terminal twig nodes

    def add(self, point: np.ndarray, parent: int, radius: float) -> int:
        self.points.append(np.asarray(point, dtype=np.float32))
        self.parent.append(parent)
        self.radius.append(radius)
        return len(self.points) - 1


def _cluster_tree(
    tree: _Tree, root: int, seeds: np.ndarray, labels: Sequence[int], radius: float, pull: float
) -> list[list[int]]:
    """Grow a binary tree from ``root`` to ``seeds`` by recursive 2-means splitting.

    Returns, for every node added, the list of territory labels downstream of it
    (node order), so that the occlusion can pick whole subtrees.
    """
    subtrees: list[list[int]] = []

    def grow(parent: int, idx: np.ndarray, r: float) -> None:
        pts = seeds[idx]
        centre = pts.mean(axis=0)
        if len(idx) == 1:
            node = tree.add(pts[0], parent, r)
            tree.leaf_of[node] = labels[int(idx[0])]
            subtrees.append([labels[int(idx[0])]])
            return
        start = tree.points[parent]
        node = tree.add(start + (centre - start) * pull, parent, r)
        subtrees.append([labels[int(i)] for i in idx])
        # Split along the longest axis of the cluster: a cheap, stable 2-means.
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        order = idx[np.argsort(pts[:, axis])]
        half = len(order) // 2
        grow(node, order[:half], r * 0.8)
        grow(node, order[half:], r * 0.8)

    grow(root, np.arange(len(seeds)), radius)
    return subtrees


# ---------------------------------------------------------------------------
# Time curves
# ---------------------------------------------------------------------------


def _gamma_variate(t: np.ndarray, t0: np.ndarray, beta: float | np.ndarray, alpha: float = 3.0) -> np.ndarray:
    """Gamma-variate bolus curve, peak 1 at ``t0 + alpha*beta``; zero before ``t0``."""
    s = np.clip((t[:, None] - t0[None, :]) / beta, 0.0, None)
    return (s / alpha) ** alpha * np.exp(alpha - s)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _vessel_operator(p0: np.ndarray, p1: np.ndarray, radius: np.ndarray, size: int) -> sparse.csr_matrix:
    """Linear map from per-segment opacity to a projected image, (S, H·W) sparse.

    ``p0``/``p1`` are (S, 2) segment ends in pixels (row, column).  Each segment is
    sampled every half pixel and splatted bilinearly with the tube's chord (2r) per unit
    length, so a frame's vessel density is ``curves @ operator``.
    """
    length = np.linalg.norm(p1 - p0, axis=1)
    n_samples = np.maximum(np.ceil(length * 2.0).astype(int), 1) + 1
    seg = np.repeat(np.arange(len(p0)), n_samples)
    frac = np.concatenate([np.linspace(0.0, 1.0, m) for m in n_samples])
    pos = p0[seg] + frac[:, None] * (p1 - p0)[seg] - 0.5
    weight = 2.0 * np.maximum(radius[seg], 0.5) * (length[seg] / n_samples[seg])
    r0, c0 = np.floor(pos[:, 0]).astype(int), np.floor(pos[:, 1]).astype(int)
    fr, fc = pos[:, 0] - r0, pos[:, 1] - c0
    rows, cols, vals = [], [], []
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        rows.append(seg[ok])
        cols.append(rr[ok] * size + cc[ok])
        vals.append((weight * wgt)[ok])
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(p0), size * size),
        dtype=np.float32,
    )


def _project(labels: np.ndarray, weight: np.ndarray, n_labels: int, axis: int) -> np.ndarray:
    """Per-label line integrals along ``axis`` → (n_labels, z, other), rows superior first.

    Frontal: axis 1 (y, antero-posterior), image columns = x.
    Lateral: axis 0 (x, left-right), image columns = y (anterior on the left).
    """
    size = labels.shape[0]
    lab = np.moveaxis(labels, axis, 0)
    w = np.moveaxis(weight, axis, 0)
    other = np.arange(size)[:, None] * np.ones((1, size), dtype=np.int64)  # remaining first axis
    zz = np.arange(size)[None, :] * np.ones((size, 1), dtype=np.int64)
    flat = lab.astype(np.int64) * size * size + (size - 1 - zz)[None] * size + other[None]
    out = np.bincount(flat.ravel(), weights=w.ravel(), minlength=n_labels * size * size)
    return out.reshape(n_labels, size, size).astype(np.float32)


def _to_image(points: np.ndarray, column_axis: int, size: int) -> np.ndarray:
    """3-D points in voxel units → (row, column) on a view: rows superior first."""
    return np.stack([size - points[:, 2], points[:, column_axis]], axis=1).astype(np.float32)


def _grade_from(r: float, flow_past_occlusion: bool) -> str:
    if r >= 1.0 - 1e-9:
        return "3"
    if r >= 0.5:
        return "2b"
    if r >= 0.1:
        return "2a"
    return "1" if flow_past_occlusion else "0"


def _sample_grade(rng: np.random.Generator, mode: str) -> str:
    """Balanced over the classes of ``mode``; inside a merged class, over its grades."""
    names = CLASS_NAMES[mode]
    target = int(rng.integers(len(names)))
    members = [g for g in ("0", "1", "2a", "2b", "3") if class_index(g, mode) == target]
    return str(rng.choice(members))


#: Reference grid edge: vessel radii, attenuation per voxel and misregistration are
#: set in its voxels, so a case drawn at another ``size`` looks the same, only finer.
REFERENCE_SIZE = 64


def _in_region(points: np.ndarray, mask_fn: Any) -> np.ndarray:
    """Rows of ``points`` (N, 3) for which ``mask_fn(x, y, z)`` holds."""
    return points[mask_fn(points[:, 0], points[:, 1], points[:, 2])]


def _draw_points(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], n: int) -> np.ndarray:
    """``n`` uniform points in the box [lo, hi]: always ``n`` draws, so the stream of
    random numbers, and with it the case, does not depend on the voxel grid."""
    return rng.uniform(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64), (n, 3))


def generate_case(
    rng: np.random.Generator, config: SyntheticConfig, case_id: str, mode: str = "4class"
) -> SyntheticCase:
    """Draw one case: anatomy, occlusion, reperfusion, time curves, two projections.

    Anatomy, occlusion, timing and noise each draw from their own child stream, and
    anatomy draws a fixed count of continuous points (no voxel lists): the same
    ``rng`` state gives the same head, grade and timing at any ``config.size``, so
    a case is rendered at 64² for training and at 256² for ``dicomnode synth``.
    """
    n = config.size
    x, y, z = _grid(n)
    vox = 2.0 / REFERENCE_SIZE  # vessel radii are set in reference voxels
    per_voxel = REFERENCE_SIZE / n  # attenuation per voxel of this grid
    rng_anat, rng_occl, rng_time, rng_noise = rng.spawn(4)

    # -- head and territories ------------------------------------------------
    ax, ay, az = rng_anat.uniform(0.80, 0.92), rng_anat.uniform(0.88, 0.97), rng_anat.uniform(0.78, 0.9)
    cx, cy, cz = rng_anat.uniform(-0.03, 0.03, 3)
    z_split = rng_anat.uniform(0.0, 0.45)
    # The ACA's lateral overlay starts about where the inferior division's frontal one
    # ends: each view hides a different part of the downstream territory (the lower
    # part on the frontal view, the upper part on the lateral one), so either view
    # alone misses defects the other shows.
    aca_y, aca_z = rng_anat.uniform(-0.3, -0.05), z_split + rng_anat.uniform(-0.1, 0.1)

    def scaled(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, ...]:
        xs, ys, zs = (px - cx) / ax, (py - cy) / ay, (pz - cz) / az
        return xs, ys, zs, np.sqrt(xs**2 + ys**2 + zs**2)

    def downstream_fn(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        # Downstream territory (superior M2 division): the antero-lateral quarter of
        # the cortical shell.  Its normal has x and y components everywhere, so on both
        # views each leaf projects mostly clear of the others.
        xs, ys, zs, rho = scaled(px, py, pz)
        return (rho >= 0.72) & (rho < 0.97) & (zs > -0.5) & (xs > 0.25) & (ys < -0.15) & (zs > -0.4)

    def inferior_fn(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        # Frontal-only overlay: the inferior division's temporal territory, behind the
        # downstream one (same x and z), beside it on the lateral view (larger y).
        xs, ys, zs, rho = scaled(px, py, pz)
        return (rho >= 0.72) & (rho < 0.97) & (xs > 0.25) & (ys > -0.05) & (zs < z_split) & (zs > -0.5)

    def aca_fn(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        # Lateral-only overlay: the ACA's medial territory, over the downstream one on
        # the lateral view (same y and z), beside it on the frontal view (smaller x).
        xs, ys, zs, rho = scaled(px, py, pz)
        return (rho < 1.0) & (zs > -0.5) & (xs > 0.02) & (xs < 0.22) & (ys < aca_y) & (zs > aca_z)

    downstream = downstream_fn(x, y, z)
    inferior = inferior_fn(x, y, z)
    aca = aca_fn(x, y, z)
    _, _, _, rho = scaled(x, y, z)

    def to_abs(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        return np.stack([cx + ax * xs, cy + ay * ys, cz + az * zs], axis=1)

    # Leaves of the downstream territory: Voronoi cells of seeds on the mid-shell,
    # drawn as continuous points (a fixed number of draws, whatever the grid).
    k = int(rng_anat.integers(config.n_leaves[0], config.n_leaves[1] + 1))
    box = _draw_points(rng_anat, (0.25, -1.0, -0.4), (1.0, -0.15, 1.0), 8192)
    cand = to_abs(box[:, 0], box[:, 1], box[:, 2])
    mid_shell = downstream_fn(*cand.T) & (np.linalg.norm(box, axis=1) > 0.8) & (np.linalg.norm(box, axis=1) < 0.9)
    seeds = cand[mid_shell][:k]
    if len(seeds) < k:  # pragma: no cover - 8192 draws leave ~10× more than needed
        raise RuntimeError("too few seed points in the downstream territory")
    pts = np.stack([x[downstream], y[downstream], z[downstream]], 1)
    leaf_of_voxel = np.argmin(((pts[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    labels = np.zeros(x.shape, dtype=np.int16)
    labels[downstream] = leaf_of_voxel + 1  # 1..k: downstream leaves
    inf_label, aca_label = k + 1, k + 2
    labels[inferior] = inf_label
    labels[aca] = aca_label
    n_labels = k + 3
    # Territory volumes (what the reperfused fraction counts); a leaf whose cell holds
    # no voxel of a coarse grid weighs nothing there, and r stays exact for the grid.
    volumes = np.bincount(leaf_of_voxel, minlength=k).astype(np.float64)
    # Points inside the downstream territory for the terminal twigs of each leaf.
    twig_box = _draw_points(rng_anat, (0.25, -1.0, -0.4), (1.0, -0.15, 1.0), 2048)
    twig_pts = to_abs(twig_box[:, 0], twig_box[:, 1], twig_box[:, 2])
    twig_pts = twig_pts[downstream_fn(*twig_pts.T)]
    twig_leaf = np.argmin(((twig_pts[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)

    # -- vessel tree ---------------------------------------------------------
    tree = _Tree([], [], [], {}, {})
    ica = tree.add(np.array([cx + 0.1, cy - 0.05, cz - 0.55]), -1, 2.2 * vox)
    m1 = tree.add(np.array([cx + 0.45 * ax, cy - 0.05, cz - 0.28]), ica, 1.8 * vox)
    superior = tree.add(np.array([cx + 0.62 * ax, cy - 0.15, cz - 0.05]), m1, 1.5 * vox)
    subtrees = _cluster_tree(tree, superior, seeds, list(range(1, k + 1)), 1.3 * vox, 0.55)
    first_downstream_node = superior
    # Terminal twigs inside each leaf: most of a leaf's visible vessels lie over it.
    for node, lab in list(tree.leaf_of.items()):
        own_pts = twig_pts[twig_leaf == lab - 1][:3]
        if len(own_pts) == 0:
            own_pts = seeds[lab - 1][None]
        tree.territory_nodes[lab] = [tree.add(p, node, 0.5 * vox) for p in own_pts]
    # Always-perfused territories: inferior division and ACA, a few branches each.
    overlay_nodes: dict[int, list[int]] = {}
    for lab, origin, mask_fn in ((inf_label, m1, inferior_fn), (aca_label, ica, aca_fn)):
        drawn = _draw_points(rng_anat, (cx - 1.0, cy - 1.0, cz - 1.0), (cx + 1.0, cy + 1.0, cz + 1.0), 4096)
        own = _in_region(drawn, mask_fn)[:11]
        overlay_nodes[lab] = []
        if len(own) == 0:
            continue
        trunk = tree.add(own[0] * 0.5 + tree.points[origin] * 0.5, origin, 1.3 * vox)
        # Dense, early-filling branches: they clutter the overlapped region in the
        # arterial phase as the blush does later, so a missing downstream twig under
        # them is no giveaway either.
        for p in own[1:]:
            overlay_nodes[lab].append(tree.add(p, trunk, 0.8 * vox))

    # -- occlusion and reperfusion --------------------------------------------
    grade_wanted = _sample_grade(rng_occl, mode)
    total = volumes.sum()
    occluded = _draw_occlusion(rng_occl, grade_wanted, subtrees, volumes, total)
    perfused_leaves = [lab for lab in range(1, k + 1) if lab not in occluded]
    r = float(volumes[[lab - 1 for lab in perfused_leaves]].sum() / total) if perfused_leaves else 0.0
    trickle = grade_wanted == "1"
    grade = _grade_from(r, trickle)

    # -- time ----------------------------------------------------------------
    t_native = int(rng_time.integers(config.frames[0], config.frames[1] + 1))
    frame_time_ms = float(rng_time.choice([250.0, 333.3, 500.0]))
    t = np.arange(t_native, dtype=np.float32)
    scale = t_native / 20.0  # curves are drawn for a ~20-frame run
    t_inj = rng_time.uniform(0.5, 2.0) * scale
    velocity = rng_time.uniform(0.9, 1.6) / scale  # normalised units per frame
    beta_a = rng_time.uniform(0.8, 1.2) * scale
    beta_p = rng_time.uniform(1.6, 2.4) * scale
    # Slow flow through the recanalised branch, drawn for every grade: were it only in
    # incomplete reperfusion, its timing alone would tell 2b from 3 on either view.
    reperfusion_delay = rng_time.uniform(0.0, 2.0) * scale

    pts3 = np.stack(tree.points)
    par = np.array(tree.parent)
    arrival = np.zeros(len(pts3), dtype=np.float32)
    for i in range(len(pts3)):
        if par[i] >= 0:
            arrival[i] = arrival[par[i]] + np.linalg.norm(pts3[i] - pts3[par[i]]) / velocity
    arrival += t_inj

    # Which nodes carry contrast, and how late: a node is filled if any leaf it feeds is
    # perfused; in a trickle (grade 1) the branch past the occlusion fills faintly and
    # too late for any parenchymal blush within the run.
    downstream_nodes = _descendants(par, first_downstream_node)
    node_leaves = _leaves_below(par, tree.leaf_of, tree.territory_nodes)
    filled = np.ones(len(pts3), dtype=bool)
    delay = np.zeros(len(pts3), dtype=np.float32)
    gain_v = np.ones(len(pts3), dtype=np.float32)
    trickle_nodes: set[int] = set()
    if trickle:
        path = _path_to_leaf(par, tree.leaf_of, rng_time)
        trickle_nodes = set(path)
    for i in downstream_nodes:
        below = node_leaves.get(i, set())
        if trickle:
            filled[i] = i in trickle_nodes
            delay[i] = (t_native * 0.55)
            gain_v[i] = 0.5
        else:
            filled[i] = bool(below - occluded)
            delay[i] = reperfusion_delay
    vessel_curves = _gamma_variate(t, arrival + delay, beta_a) * (filled * gain_v)[None, :]

    leaf_start = np.zeros(n_labels, dtype=np.float32)
    leaf_on = np.zeros(n_labels, dtype=np.float32)
    gains = np.zeros(n_labels, dtype=np.float32)
    for node, lab in tree.leaf_of.items():
        leaf_start[lab] = arrival[node] + delay[node] + rng_time.uniform(1.5, 2.5) * scale
        leaf_on[lab] = 0.0 if (trickle or lab in occluded) else 1.0
        gains[lab] = rng_time.uniform(*config.leaf_gain)
    for lab, nodes in overlay_nodes.items():
        leaf_start[lab] = (arrival[nodes].mean() if nodes else t_inj) + rng_time.uniform(0.0, 1.5) * scale
        leaf_on[lab] = 1.0 if nodes else 0.0
        gains[lab] = rng_time.uniform(*config.overlay_gain)
    blush_curves = _gamma_variate(t, leaf_start, beta_p) * (leaf_on * gains)[None, :]

    # -- projections -----------------------------------------------------------
    texture = _smooth_field(rng_time, n, 0.35)
    contrast = rng_time.uniform(0.75, 1.25)
    # Per reference voxel: a 12-voxel column at peak ≈ 0.66; scaled to this grid's voxels.
    mu_blush = 0.055 * contrast * per_voxel
    mu_vessel = 0.4 * contrast * per_voxel  # per voxel of chord
    px_per_ref = n / REFERENCE_SIZE
    out: dict[str, np.ndarray] = {}
    proj_maps: dict[str, np.ndarray] = {}
    for (view, axis, cols), rng_view in zip((("frontal", 1, 0), ("lateral", 0, 1)), rng_noise.spawn(2), strict=True):
        proj = _project(labels, texture, n_labels, axis)
        proj[0] = 0.0
        proj_maps[view] = proj
        # Vessel segments in pixel units: rows = superior first, columns per view.
        p_child = (pts3 + 1.0) / 2.0 * n
        p_par = p_child[np.maximum(par, 0)]
        keep = par >= 0
        op = _vessel_operator(_to_image(p_par[keep], cols, n), _to_image(p_child[keep], cols, n),
                              np.array(tree.radius, dtype=np.float32)[keep] * n / 2.0, n)
        vessels = (op.T @ vessel_curves[:, keep].T).T.reshape(t_native, n, n)
        vessels = ndimage.gaussian_filter(vessels, (0, 0.6 * px_per_ref, 0.6 * px_per_ref))
        density = np.einsum("tk,khw->thw", blush_curves, proj) * mu_blush
        density += vessels * mu_vessel
        frames = np.exp(-density)
        shift = rng_view.integers(-config.misregistration_px, config.misregistration_px + 1, (t_native, 2))
        moved = rng_view.random(t_native) < 0.3
        for i in range(t_native):
            if shift[i].any() and moved[i]:
                frames[i] = np.roll(frames[i], tuple(int(round(s * px_per_ref)) for s in shift[i]), axis=(0, 1))
        frames += rng_view.normal(0.0, rng_view.uniform(*config.noise), frames.shape)
        out[view] = np.clip(frames, 0.0, 1.25).astype(np.float32)

    info: dict[str, Any] = {
        "n_leaves": k,
        "occluded_leaves": sorted(occluded),
        "trickle": trickle,
        "frames": t_native,
    }
    info.update(apparent_grades(proj_maps, occluded, volumes, trickle, k, inf_label, aca_label))
    return SyntheticCase(case_id, grade, r, out["frontal"], out["lateral"], frame_time_ms, info)


def _descendants(parent: np.ndarray, node: int) -> list[int]:
    out, stack = [], [node]
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parent):
        children.setdefault(int(p), []).append(i)
    while stack:
        cur = stack.pop()
        out.append(cur)
        stack.extend(children.get(cur, []))
    return out


def _leaves_below(parent: np.ndarray, leaf_of: dict[int, int], twigs: dict[int, list[int]]) -> dict[int, set[int]]:
    """Territory labels downstream of every node (a twig feeds its leaf's territory)."""
    below: dict[int, set[int]] = {}
    owners = dict(leaf_of)
    for lab, nodes in twigs.items():
        for node in nodes:
            owners[node] = lab
    for node, lab in owners.items():
        cur = node
        while cur >= 0:
            below.setdefault(cur, set()).add(lab)
            cur = int(parent[cur])
    return below


def _path_to_leaf(parent: np.ndarray, leaf_of: dict[int, int], rng: np.random.Generator) -> list[int]:
    leaf = int(rng.choice(sorted(leaf_of)))
    path = []
    while leaf >= 0:
        path.append(leaf)
        leaf = int(parent[leaf])
    return path


def _draw_occlusion(
    rng: np.random.Generator,
    grade: str,
    subtrees: list[list[int]],
    volumes: np.ndarray,
    total: float,
) -> set[int]:
    """Occluded leaves: a union of whole subtrees (emboli lodge in branches) whose
    complement gives a reperfused fraction in the grade's range."""
    every = set(subtrees[0])
    if grade in ("0", "1"):
        return every
    if grade == "3":
        return set()
    lo, hi = R_RANGES[grade]
    for _ in range(200):
        occluded: set[int] = set()
        for idx in rng.permutation(len(subtrees) - 1) + 1:
            candidate = occluded | set(subtrees[idx])
            r = 1.0 - volumes[[i - 1 for i in candidate]].sum() / total
            if r < lo:
                continue
            occluded = candidate
            if r <= hi:
                return occluded
    # Leaf-by-leaf fallback for trees whose subtrees jump over the range.
    for _ in range(200):
        occluded = set()
        for lab in rng.permutation(sorted(every)):
            candidate = occluded | {int(lab)}
            r = 1.0 - volumes[[i - 1 for i in candidate]].sum() / total
            if r < lo:
                continue
            occluded = candidate
            if r <= hi:
                return occluded
    raise RuntimeError("could not draw an occlusion for grade " + grade)


def apparent_grades(
    proj: dict[str, np.ndarray],
    occluded: set[int],
    volumes: np.ndarray,
    trickle: bool,
    k: int,
    inf_label: int,
    aca_label: int,
) -> dict[str, Any]:
    """The grade each view (and both together) shows from the geometry alone.

    A pixel shows a defect when its ray crosses occluded downstream tissue and no
    perfused tissue at all.  An occluded leaf counts as seen in proportion to its
    footprint that shows a defect; the apparent reperfused fraction is 1 minus the
    volume of the occluded leaves as seen.  Intensity cues are ignored, so this is the
    ambiguity a reader without them faces, measured, not assumed.
    """
    total = volumes.sum()
    seen: dict[str, np.ndarray] = {}
    for view, p in proj.items():
        perfused = p[[lab for lab in range(1, k + 1) if lab not in occluded] + [inf_label, aca_label]].sum(0) > 0
        vis = np.zeros(k)
        for lab in occluded:
            foot = p[lab] > 0
            vis[lab - 1] = (foot & ~perfused).sum() / max(int(foot.sum()), 1)
        seen[view] = vis
    seen["fused"] = np.maximum(seen["frontal"], seen["lateral"])
    out: dict[str, Any] = {}
    for view, vis in seen.items():
        r_app = 1.0 - float((vis * volumes).sum() / total)
        # A defect hidden to under 10 % of its footprint reads as no defect.
        r_app = 1.0 if all(vis[lab - 1] < 0.1 for lab in occluded) else r_app
        out[f"apparent_r_{view}"] = round(r_app, 4)
        out[f"apparent_grade_{view}"] = _grade_from(r_app, trickle)
    return out


def generate(
    n: int, seed: int, config: SyntheticConfig | None = None, mode: str = "4class"
) -> list[SyntheticCase]:
    """``n`` cases reproducible from ``seed`` (independent of how many are drawn)."""
    return list(iter_cases(n, seed, config, mode))


def iter_cases(
    n: int, seed: int, config: SyntheticConfig | None = None, mode: str = "4class"
) -> Iterator[SyntheticCase]:
    """Lazily yield ``n`` cases; case ``i`` depends only on (``seed``, ``i``)."""
    cfg = config or SyntheticConfig()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        case = generate_case(rng, cfg, f"syn-{seed}-{i:05d}", mode)
        case.info.update(seed=seed, index=i, mode=mode)
        yield case


def rerender(case: SyntheticCase, size: int, config: SyntheticConfig | None = None) -> SyntheticCase:
    """``case`` drawn again on a ``size``³ grid: the same head, grade and timing, finer.

    Only for cases from :func:`iter_cases`/:func:`generate` (their ``info`` holds the
    seed and index).  ``dicomnode synth`` writes runs at a clinical matrix this way
    while training draws the same cases at 64².

    Raises
    ------
    ValueError
        ``case`` carries no seed, or the redraw does not reproduce its grade.
    """
    if "seed" not in case.info:
        raise ValueError(f"{case.case_id}: not from iter_cases, cannot be drawn again")
    cfg = replace(config or SyntheticConfig(), size=int(size))
    rng = np.random.default_rng([int(case.info["seed"]), int(case.info["index"])])
    again = generate_case(rng, cfg, case.case_id, str(case.info.get("mode", "4class")))
    again.info.update(seed=case.info["seed"], index=case.info["index"], size=int(size))
    if again.grade != case.grade:  # pragma: no cover - the grade is drawn before any voxel
        raise ValueError(f"{case.case_id}: grade {again.grade} at {size}² but {case.grade} at {case.frontal.shape[-1]}²")
    return again


__all__ = [
    "SyntheticCase",
    "SyntheticConfig",
    "apparent_grades",
    "generate",
    "generate_case",
    "iter_cases",
    "rerender",
]
