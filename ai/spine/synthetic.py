"""Synthetic lumbar MR studies with exact landmarks and grades (methods-notes §3.6).

A phantom is drawn in a curvilinear frame that follows the spine: ``ell`` (mm along a
lordotic centreline, downwards) and ``w`` (mm across it, positive posterior).  Bodies,
discs, canal, cord and posterior elements are signed-distance shapes in that frame, so a
tilted, curved spine costs nothing extra and every landmark (a body or disc centre) lies
exactly on the centreline.  Grades change what a radiologist would look at:

=====================  ==========================================================
disc v2 bulge           posterior contour pushed out 2.5–3.5 mm along its height
disc v3 protrusion      focal posterior bump 4–6 mm
disc v4 extrusion       7.5–11 mm bump migrating 3–6 mm up or down
disc v2–v4 (any)        20–40 % height loss, nucleus T2 signal 0.30–0.50 (normal 0.85)
disc v5 Schmorl's node  half-disc of disc signal notched into an endplate
vertebra v2             anterior corner osteophytes + endplate band signal change
=====================  ==========================================================

Each study holds a sagittal T2 series (5 slices, the middle one mid-sagittal and
annotated), a sagittal T1 decoy with the same geometry and an axial T2 decoy, so
series selection is exercised too.  Image axes: columns run anterior → posterior,
rows superior → inferior (``ImageOrientationPatient`` = [0, 1, 0, 0, 0, -1]).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from ai.spine.datasets import SpineSample
from ai.spine.labels import DISC_IDS, IDENTIFICATIONS, VERTEBRA_IDS

#: In-plane matrix of a synthetic slice (pixels) and slices per sagittal series.
SIZE = 160
N_SLICES = 5
#: Structures from top to bottom; T11/T12 and S1/S2 frame the 11 landmarks.
LEVELS: tuple[str, ...] = ("T11", "T11-T12", "T12", "T12-L1", "L1", "L1-L2", "L2", "L2-L3", "L3",
                           "L3-L4", "L4", "L4-L5", "L5", "L5-S1", "S1", "S1-S2", "S2")

#: Signal of each tissue, T2- and T1-weighted (fractions of the series' full scale).
T2: Mapping[str, float] = {"soft": 0.28, "vessel": 0.06, "marrow": 0.42, "cortex": 0.10,
                           "annulus": 0.30, "nucleus": 0.85, "csf": 0.92, "cord": 0.45,
                           "bone_post": 0.22, "lig": 0.45, "fat": 0.80, "air": 0.02,
                           "modic": 0.74, "schmorl": 0.78}
T1: Mapping[str, float] = {"soft": 0.35, "vessel": 0.10, "marrow": 0.62, "cortex": 0.10,
                           "annulus": 0.32, "nucleus": 0.38, "csf": 0.12, "cord": 0.40,
                           "bone_post": 0.40, "lig": 0.45, "fat": 0.90, "air": 0.02,
                           "modic": 0.30, "schmorl": 0.30}


@dataclass
class Anatomy:
    """Drawn geometry of one spine (mm) and its grades; ``centres`` are arc lengths."""

    spacing: float
    centres: dict[str, float]
    heights: dict[str, float]
    depth: dict[str, float]
    tags: dict[str, str]
    canal: float
    conus: float
    features: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Frame:
    """Curvilinear coordinates of every pixel, and the centreline in pixels."""

    ell: np.ndarray
    w: np.ndarray
    curve_ell: np.ndarray
    curve_px: np.ndarray


# ---------------------------------------------------------------------------
# Geometry: grades, layout along the arc, centreline and frame.
# ---------------------------------------------------------------------------


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random spine dimensions and grades (prevalence rises towards L5-S1)."""
    scale = rng.uniform(0.9, 1.1)
    tags: dict[str, str] = {}
    feats: dict[str, dict[str, float]] = {}
    for k, name in enumerate(VERTEBRA_IDS):
        tags[name] = "v2" if rng.random() < 0.25 + 0.06 * k else "v1"
        feats[name] = {"osteo": rng.uniform(3.0, 5.0), "band": rng.uniform(3.0, 5.0),
                       "modic_bright": float(rng.random() < 0.7)}
    for k, name in enumerate(DISC_IDS):
        grade = "v1"
        if rng.random() < 0.28 + 0.07 * k:
            grade = str(rng.choice(["v2", "v3", "v4"], p=[0.45, 0.38, 0.17]))
        tags[name] = grade + (",v5" if rng.random() < 0.10 else "")
        feats[name] = {"bulge": rng.uniform(2.5, 3.5), "prot": rng.uniform(4.0, 6.0),
                       "ext": rng.uniform(7.5, 11.0),
                       "migrate": rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 6.0),
                       "nucleus": rng.uniform(0.30, 0.50), "loss": rng.uniform(0.6, 0.8),
                       "schmorl_side": rng.choice([-1.0, 1.0]),
                       "schmorl_r": rng.uniform(2.5, 4.0), "schmorl_w": rng.uniform(-0.25, 0.25)}
    heights, depth = {}, {}
    for name in LEVELS:
        if "-" in name:
            h = rng.uniform(7.5, 9.5) * scale
            if name in tags and tags[name].split(",")[0] != "v1":
                h *= feats[name]["loss"]
            heights[name] = 3.0 if name == "S1-S2" else h
        else:
            heights[name] = rng.uniform(19.0, 23.0) * scale * (0.85 if name == "S2" else 1.0)
        depth[name] = rng.uniform(32.0, 38.0) * scale * (0.8 if name == "S2" else 1.0)
    for i, name in enumerate(LEVELS):  # a disc is as deep as its neighbours
        if "-" in name:
            depth[name] = 0.5 * (depth[LEVELS[i - 1]] + depth[LEVELS[i + 1]])
    centres, pos = {}, 0.0
    for name in LEVELS:
        centres[name] = pos + heights[name] / 2
        pos += heights[name]
    # Arc length 0 at the middle of the landmark span.
    mid = 0.5 * (centres["T12-L1"] + centres["L5-S1"])
    centres = {k: v - mid for k, v in centres.items()}
    return Anatomy(spacing=rng.uniform(1.15, 1.45), centres=centres, heights=heights,
                   depth=depth, tags=tags, canal=rng.uniform(12.0, 16.0) * scale,
                   conus=centres["L1-L2"] + rng.uniform(-8.0, 8.0), features=feats)


def centreline(rng: np.random.Generator, anatomy: Anatomy, size: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Dense centreline: (arc length mm, (n, 2) SCOORD pixels), lordotic and tilted."""
    span = anatomy.centres["L5-S1"] - anatomy.centres["T12-L1"]
    depth_mm = rng.uniform(4.0, 14.0)
    tilt = math.radians(rng.uniform(-15.0, 15.0))
    s = np.arange(-span / 2 - 120.0, span / 2 + 120.0, 1.0)
    half, slope = span / 2, depth_mm * math.pi / span
    x = -depth_mm * np.cos(np.pi * s / span)
    below, above = s > half, s < -half
    # Lordosis continues into a sacral (below) and a thoracic (above) kyphosis.
    x[below] = slope * (s[below] - half) + 0.011 * (s[below] - half) ** 2
    x[above] = -slope * (s[above] + half) + 0.004 * (s[above] + half) ** 2
    pts = np.stack([x, s], axis=1)
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    pts = pts @ rot.T
    ell = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    ell -= np.interp(0.0, s, ell)
    sp = anatomy.spacing
    # Keep every landmark, and S1 (levels are counted from the sacrum), 10 px inside.
    lm = np.stack([np.interp(anatomy.centres[n], ell, pts[:, k]) for k in (0, 1)
                   for n in (*IDENTIFICATIONS, "S1")]).reshape(2, -1) / sp
    margin = 10.0
    cx_lo, cx_hi = margin - lm[0].min(), size - margin - lm[0].max()
    cy_lo, cy_hi = margin - lm[1].min(), size - margin - lm[1].max()
    # Field-of-view placement varies by ±18 mm across and ±25 mm along the spine.
    cx = float(np.clip(0.44 * size + rng.uniform(-18, 18) / sp, cx_lo, max(cx_lo, cx_hi)))
    cy = float(np.clip(0.5 * size + rng.uniform(-25, 25) / sp, cy_lo, max(cy_lo, cy_hi)))
    return ell, pts / sp + np.array([cx, cy])


def make_frame(ell: np.ndarray, curve: np.ndarray, spacing: float, size: int) -> Frame:
    """(ell, w) in mm for every pixel centre, from its nearest centreline point."""
    jj, ii = np.mgrid[0:size, 0:size]
    pix = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1)
    _, idx = cKDTree(curve).query(pix)
    tangent = np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    d = pix - curve[idx]
    t = tangent[idx]
    along = (d * t).sum(axis=1) * spacing
    # Normal (t_y, -t_x) points posterior when the tangent points down the image.
    across = (d[:, 0] * t[:, 1] - d[:, 1] * t[:, 0]) * spacing
    return Frame(ell=(ell[idx] + along).reshape(size, size), w=across.reshape(size, size),
                 curve_ell=ell, curve_px=curve)


def landmarks(anatomy: Anatomy, frame: Frame) -> np.ndarray:
    """(11, 2) SCOORD (column, row) of the body and disc centres, in landmark order."""
    return np.array([[np.interp(anatomy.centres[n], frame.curve_ell, frame.curve_px[:, k])
                      for k in (0, 1)] for n in IDENTIFICATIONS])


# ---------------------------------------------------------------------------
# Drawing.
# ---------------------------------------------------------------------------


def _box(u: np.ndarray, w: np.ndarray, hu: float, hw: float, r: float) -> np.ndarray:
    """Signed distance (mm) to a rounded box of half-sizes ``hu`` × ``hw``."""
    r = min(r, hu, hw)
    qu, qw = np.abs(u) - hu + r, np.abs(w) - hw + r
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qw, 0))
    return outside + np.minimum(np.maximum(qu, qw), 0) - r


def _ellipse(u: np.ndarray, w: np.ndarray, au: float, aw: float) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipse with semi-axes ``au`` × ``aw``."""
    k = np.hypot(u / au, w / aw)
    return (k - 1.0) * min(au, aw)


class _Canvas:
    """Painter's-algorithm image with anti-aliased shapes (one pixel of soft edge).

    Shapes are evaluated only on the pixels near them (``idx``, flat indices), which
    keeps a 160² slice at a few milliseconds.
    """

    def __init__(self, shape: tuple[int, int], value: float | np.ndarray, spacing: float) -> None:
        self.shape = shape
        self.flat = np.broadcast_to(np.asarray(value, dtype=np.float64), shape).ravel().copy()
        self.spacing = spacing

    def paint(self, sdf: np.ndarray, value: float | np.ndarray,
              idx: np.ndarray | None = None) -> None:
        m = np.clip(0.5 - sdf.ravel() / self.spacing, 0.0, 1.0)
        v = np.ravel(np.asarray(value, dtype=np.float64))
        if idx is None:
            self.flat = self.flat * (1 - m) + v * m
        else:
            self.flat[idx] = self.flat[idx] * (1 - m) + v * m

    @property
    def img(self) -> np.ndarray:
        return self.flat.reshape(self.shape)


def render_sagittal(anatomy: Anatomy, frame: Frame, contrast: Mapping[str, float],
                    offset: float, texture: np.ndarray) -> np.ndarray:
    """One sagittal slice ``offset`` mm off the midline (float, 0..1 scale)."""
    ell2, w2, c = frame.ell, frame.w, contrast
    ell, w, tex = ell2.ravel(), w2.ravel(), texture.ravel()
    cv = _Canvas(ell2.shape, c["soft"] + 0.03 * texture, anatomy.spacing)
    body = math.sqrt(max(0.0, 1.0 - (offset / 25.0) ** 2))
    canal_f = math.sqrt(max(0.0, 1.0 - (offset / 11.0) ** 2))
    post = float(np.mean([anatomy.depth[n] for n in LEVELS if "-" not in n])) / 2
    top, bottom = anatomy.centres["T11"] - 15, anatomy.centres["S2"] + 10
    along = (ell > top) & (ell < bottom)
    # Anterior vessels (aorta / IVC flow void) over the upper lumbar spine.
    vessel = _box(ell - anatomy.centres["L2"], w + post + 11.0, 60.0, 4.0, 3.0)
    cv.paint(np.where(ell < anatomy.centres["L4"], vessel, 99.0), c["vessel"])
    # Posterior elements, subcutaneous fat and air behind the back.
    canal_lo = post + 1.5
    canal_hi = canal_lo + anatomy.canal * max(canal_f, 0.25)
    lamina_hi = canal_hi + 32.0
    cv.paint(np.where(along & (w > canal_hi) & (w < lamina_hi), -1.0, 99.0), c["lig"])
    for name in LEVELS:
        if "-" in name:
            continue
        idx = _near(ell, anatomy.centres[name], 0.5 * anatomy.heights[name] + 8.0)
        spin = _box(ell[idx] - anatomy.centres[name] - 2.0, w[idx] - (canal_hi + 16.0),
                    0.33 * anatomy.heights[name], 16.0, 3.0)
        cv.paint(spin, c["bone_post"], idx)
    cv.paint(np.where((w > lamina_hi) & (w < lamina_hi + 14.0), -1.0, 99.0), c["fat"])
    cv.paint(np.where(w > lamina_hi + 14.0, -1.0, 99.0), c["air"])
    # Canal: posterior longitudinal ligament, CSF, conus then cauda equina.
    csf = c["csf"] * (1.0 - 0.03 * abs(offset))
    canal = np.maximum(canal_lo - w, w - canal_hi)
    cv.paint(np.where(along, np.maximum(canal, -(w - post)), 99.0), c["cortex"])
    cv.paint(np.where(along, canal, 99.0), csf)
    mid_canal = 0.5 * (canal_lo + canal_hi)
    cord_w = 3.5 * canal_f * np.clip((anatomy.conus - ell) / 25.0, 0.0, 1.0)
    cv.paint(np.where(along & (cord_w > 0.3), np.abs(w - mid_canal) - cord_w, 99.0), c["cord"])
    # Vertebral bodies (cortex rim, marrow, degeneration signs).
    for name in LEVELS:
        if "-" in name:
            continue
        hu, hw = anatomy.heights[name] / 2, anatomy.depth[name] / 2 * body
        idx = _near(ell, anatomy.centres[name], hu + 3.0)
        u, wi = ell[idx] - anatomy.centres[name], w[idx]
        sdf = _box(u, wi, hu, hw, 2.0)
        cv.paint(sdf, c["cortex"], idx)
        cv.paint(sdf + 1.2, c["marrow"] + 0.05 * tex[idx], idx)
        if anatomy.tags.get(name) == "v2":
            f = anatomy.features[name]
            band = np.maximum(sdf + 1.2, hu - f["band"] - np.abs(u))
            cv.paint(band, c["modic"] if f["modic_bright"] else c["cortex"] + 0.1, idx)
            for side in (-1.0, 1.0):
                beak = _ellipse(u - side * (hu - 1.0), wi + hw + f["osteo"] / 2 - 0.5, 1.6,
                                f["osteo"] / 2 + 0.8)
                cv.paint(beak, c["cortex"] + 0.06, idx)
    # Discs: annulus, nucleus, herniations, Schmorl's nodes.
    for name in LEVELS:
        if "-" not in name:
            continue
        idx = _near(ell, anatomy.centres[name], anatomy.heights[name] / 2 + 12.0)
        _draw_disc(cv, anatomy, name, idx, ell[idx] - anatomy.centres[name], w[idx], c, body,
                   offset)
    return cv.img


def _near(ell: np.ndarray, centre: float, half: float) -> np.ndarray:
    """Flat indices of the pixels within ``half`` mm (along the spine) of ``centre``."""
    return np.flatnonzero(np.abs(ell - centre) < half)


def _draw_disc(cv: _Canvas, anatomy: Anatomy, name: str, idx: np.ndarray, u: np.ndarray,
               w: np.ndarray, c: Mapping[str, float], body: float, offset: float) -> None:
    hu, hw = anatomy.heights[name] / 2, anatomy.depth[name] / 2 * body
    tag = anatomy.tags.get(name, "v1").split(",")
    f = anatomy.features.get(name, {})
    grade = tag[0]
    bulge = f.get("bulge", 0.0) if grade == "v2" else 0.0
    # The posterior margin follows a parabola over the disc height: a bulge is broad.
    post_edge = hw + 0.6 + bulge * np.clip(1.0 - (u / max(hu, 1e-3)) ** 2, 0.0, 1.0)
    sdf = np.maximum(np.abs(u) - hu, np.maximum(-(w + hw + 0.6), w - post_edge))
    cv.paint(sdf, c["annulus"], idx)
    if grade == "v3":
        cv.paint(_ellipse(u, w - hw, 3.5, f["prot"]), c["annulus"] + 0.08, idx)
    elif grade == "v4":
        neck = _ellipse(u, w - hw, 2.5, 4.0)
        frag = _ellipse(u - f["migrate"], w - hw - f["ext"] / 2, 4.5, f["ext"] / 2)
        cv.paint(np.minimum(neck, frag), c["annulus"] + 0.12, idx)
    if name == "S1-S2":
        return
    nucleus = c["nucleus"] if grade == "v1" else f.get("nucleus", 0.4) * c["nucleus"] / 0.85
    nucleus *= 1.0 - 0.012 * abs(offset)
    cv.paint(_ellipse(u, w - 0.08 * hw, max(0.55 * hu, 1.2), 0.62 * hw), nucleus, idx)
    if "v5" in tag:
        side = f["schmorl_side"]
        node = _ellipse(u - side * hu, w - f["schmorl_w"] * hw, f["schmorl_r"],
                        f["schmorl_r"] * 1.1)
        cv.paint(np.maximum(node, -side * u), c["schmorl"], idx)


def render_axial(rng: np.random.Generator, size: int, spacing: float) -> np.ndarray:
    """A crude axial T2 slice through a lumbar disc (decoy: never annotated)."""
    jj, ii = np.mgrid[0:size, 0:size]
    x = (ii + 0.5 - size / 2) * spacing
    y = (jj + 0.5 - size * 0.55) * spacing
    cv = _Canvas((size, size), 0.02, spacing)
    cv.paint(_ellipse(x, y, 150.0, 95.0), T2["fat"])
    cv.paint(_ellipse(x, y + 5.0, 140.0, 85.0), T2["soft"])
    cv.paint(_ellipse(x, y, 24.0, 17.0) + rng.uniform(-1, 1), T2["annulus"])
    cv.paint(_ellipse(x, y - 2.0, 11.0, 7.0), T2["nucleus"])
    cv.paint(_ellipse(x, y - 26.0, 9.0, 7.0), T2["csf"])
    for side in (-1.0, 1.0):
        cv.paint(_ellipse(x - side * 38.0, y + 2.0, 14.0, 18.0), 0.33)
    return cv.img


def finish(img: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Blur, bias field and Rician noise; returns stored uint16 values (12 bits)."""
    size = img.shape[0]
    img = gaussian_filter(img, 0.5 / max(spacing, 0.5) * 1.2)
    jj, ii = np.mgrid[0:size, 0:size] / size - 0.5
    coef = rng.uniform(-0.25, 0.25, 5)
    bias = np.exp(coef[0] * ii + coef[1] * jj + coef[2] * ii ** 2 + coef[3] * jj ** 2
                  + coef[4] * ii * jj)
    sigma = rng.uniform(0.015, 0.04)
    real = img * bias + rng.normal(0, sigma, img.shape)
    imag = rng.normal(0, sigma, img.shape)
    mag = np.hypot(real, imag)
    return np.clip(np.round(mag * rng.uniform(900, 1400)), 0, 4095).astype(np.uint16)


def texture_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth unit-variance noise: marrow and soft-tissue texture."""
    t = gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)
    return t / (t.std() + 1e-6)


@dataclass
class Phantom:
    """One drawn study: T2 and T1 sagittal series, an axial decoy, landmarks, tags."""

    t2: np.ndarray
    t1: np.ndarray
    axial: np.ndarray
    coords: np.ndarray
    tags: tuple[str, ...]
    spacing: float
    thickness: float
    extra: dict[str, Any] = field(default_factory=dict)


def draw_phantom(rng: np.random.Generator, size: int = SIZE, n_slices: int = N_SLICES,
                 decoys: bool = True) -> Phantom:
    """Draw one study; the middle slice of the T2 series carries the landmarks."""
    anatomy = draw_anatomy(rng)
    ell, curve = centreline(rng, anatomy, size)
    frame = make_frame(ell, curve, anatomy.spacing, size)
    thickness = rng.uniform(3.5, 4.5)
    texture = texture_field(rng, size)
    offsets = [(k - n_slices // 2) * thickness for k in range(n_slices)]
    t2 = np.stack([finish(render_sagittal(anatomy, frame, T2, o, texture), rng, anatomy.spacing)
                   for o in offsets])
    t1 = np.zeros((0, size, size), np.uint16)
    axial = np.zeros((0, size, size), np.uint16)
    if decoys:
        t1 = np.stack([finish(render_sagittal(anatomy, frame, T1, o, texture), rng,
                              anatomy.spacing) for o in offsets])
        axial = np.stack([finish(render_axial(rng, size, 0.9), rng, 0.9) for _ in range(3)])
    tags = tuple(anatomy.tags[n] for n in IDENTIFICATIONS)
    return Phantom(t2=t2, t1=t1, axial=axial, coords=landmarks(anatomy, frame), tags=tags,
                   spacing=anatomy.spacing, thickness=thickness)


def synthetic_samples(n: int, seed: int, size: int = SIZE,
                      n_slices: int = N_SLICES) -> list[SpineSample]:
    """``n`` synthetic sagittal T2 series with exact landmarks, reproducible from ``seed``.

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the first
    ``k`` samples of a larger set equal a set of ``k``; UIDs derive from (seed, i).
    """
    from ai.spine.dicomio import SAGITTAL_IOP, sagittal_positions, synthetic_uid

    samples = []
    for i in range(n):
        ph = draw_phantom(np.random.default_rng([seed, i]), size=size, n_slices=n_slices,
                          decoys=False)
        series_uid = synthetic_uid(seed, i, "series-t2")
        samples.append(SpineSample(
            study_instance_uid=synthetic_uid(seed, i, "study"),
            series_instance_uid=series_uid,
            slices=ph.t2, key_index=n_slices // 2,
            pixel_spacing=(ph.spacing, ph.spacing), coords=ph.coords, tags=ph.tags,
            sop_instance_uids=tuple(synthetic_uid(series_uid, k) for k in range(n_slices)),
            positions=sagittal_positions(n_slices, size, ph.spacing, ph.thickness),
            orientation=SAGITTAL_IOP,
            info={"seed": seed, "index": i, "thickness": ph.thickness},
        ))
    return samples
