"""Synthetic DSA runs whose labels are known exactly (methods-notes §4.6).

Each run is drawn from :class:`RunParams` (geometry, contrast, motion, shutters,
devices, text, noise) and rendered frame by frame as a subtracted angiogram:
mid-grey background, vessels dark while the bolus passes.  Every label follows
from the parameters, not from the pixels:

- contrast: a vessel tree (ICA → MCA/ACA) opacified by a gamma-variate bolus, or
  no tree (guide catheter only, itself a nuisance in half the runs).  Half the AP
  and lateral contrast runs are drawn in the *perfusion* style instead: the matching
  view of a projected 3-D territory model (:mod:`ai.mtici.synthetic`) fitted into
  the skull, with dense parenchymal blush and faint or no skull residue, so the
  model knows more than one look of an opacified run;
- projection: the head's outline and anatomy: AP = taller-than-wide skull with a
  central midline and two orbits; lateral = wider-than-tall skull with the face
  on one side and the skull base; oblique = near-round skull, off-centre midline,
  one orbit;
- skull: complete when the skull's bounding box lies inside the unshuttered
  field with a margin, truncated when it overshoots an edge (never in between);
- motion: per-frame rigid shifts against the mask frame, maximum 0 / 1.2–2.5 % /
  4–8 % of the field; bone edges then fail to subtract (misregistration) and the
  vessels smear in the MinIP;
- shutter: rectangular collimator blades, dark; device: a coil ball or a stent
  retriever with markers; text: burned-in annotation in a corner; noise: per-frame
  quantum-like noise on a fixed grain (so it survives resizing alike at any matrix).

Geometry is in normalised units (the field is [0, 1]²), so a run renders the same
anatomy at 256² for training and at 1024² for the timing benchmark.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ai.quality.labels import suitable_rule

logger = logging.getLogger(__name__)

BITS_STORED = 10
MAX_VALUE = (1 << BITS_STORED) - 1
BACKGROUND = 0.72  # subtracted background level (fraction of full scale)
NOISE_GRAIN = 128  # noise is drawn on this grid (the default network input) and repeated up

PRIORS: dict[str, dict[str, float]] = {
    "contrast": {"absent": 0.3, "present": 0.7},
    "projection": {"ap": 0.4, "lateral": 0.4, "oblique": 0.2},
    "skull": {"complete": 0.6, "truncated": 0.4},
    "motion": {"none": 0.5, "mild": 0.25, "severe": 0.25},
    "shutter": {"absent": 0.6, "present": 0.4},
    "device": {"absent": 0.7, "present": 0.3},
    "text": {"absent": 0.6, "present": 0.4},
    "noise": {"mild": 0.7, "severe": 0.3},
}
MOTION_RANGE = {"none": (0.0, 0.0), "mild": (0.012, 0.025), "severe": (0.04, 0.08)}
NOISE_RANGE = {"mild": (0.006, 0.014), "severe": (0.035, 0.06)}
SKULL_MARGIN = 0.03  # complete: at least this far inside the field
SKULL_OVERSHOOT = 0.05  # truncated: at least this far past an edge
#: Share of contrast runs in AP or lateral projection drawn in the "perfusion" style:
#: the capillary phase of projected 3-D territories (:mod:`ai.mtici.synthetic`, whose
#: runs the node rates before grading them), dense parenchymal blush, faint or no
#: skull residue.  Without it the model knew one look of a DSA run and rated every
#: other look (mtici's biplane runs among them) as contrast absent / motion severe.
PERFUSION_SHARE = 0.5


@dataclass(frozen=True)
class RunParams:
    """Everything that defines one synthetic run (normalised units, angles in degrees)."""

    seed: int
    labels: dict[str, str]
    frames: int
    cx: float
    cy: float
    rx: float
    ry: float
    tilt: float
    side: int  # +1/-1: face (lateral), orbit (oblique) or injected hemisphere (AP)
    shutter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, right, top, bottom
    contrast_strength: float = 0.0
    bolus_peak: float = 0.35
    max_shift: float = 0.0
    device_kind: str = ""
    catheter: bool = False
    text_corner: int = -1
    noise_sigma: float = 0.01
    primary_angle: float = 0.0
    secondary_angle: float = 0.0
    frame_time_ms: float = 250.0
    style: str = "tree"  # "tree" (drawn 2-D arteries) or "perfusion" (projected 3-D territories)
    bone_residue: float = 0.09
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    names = list(probs)
    p = np.array([probs[n] for n in names])
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def _head_box(cx: float, cy: float, rx: float, ry: float, tilt: float) -> tuple[float, ...]:
    t = math.radians(tilt)
    hx = math.sqrt((rx * math.cos(t)) ** 2 + (ry * math.sin(t)) ** 2)
    hy = math.sqrt((rx * math.sin(t)) ** 2 + (ry * math.cos(t)) ** 2)
    return cx - hx, cx + hx, cy - hy, cy + hy


def skull_clearance(p: RunParams) -> float:
    """Smallest distance from the skull's box to the unshuttered field's edges (< 0: cut)."""
    x0, x1, y0, y1 = _head_box(p.cx, p.cy, p.rx, p.ry, p.tilt)
    left, right, top, bottom = p.shutter
    return min(x0 - left, (1 - right) - x1, y0 - top, (1 - bottom) - y1)


def draw_params(rng: np.random.Generator, seed: int, frames: tuple[int, int] = (8, 16)
                ) -> RunParams:
    """Draw one run's parameters; labels first, geometry by rejection to match them."""
    labels = {name: _choice(rng, probs) for name, probs in PRIORS.items()}
    proj = labels["projection"]
    side = int(rng.choice([-1, 1]))
    aspect = {"ap": (0.80, 0.90), "lateral": (1.14, 1.30), "oblique": (0.96, 1.06)}[proj]
    shutter = (0.0, 0.0, 0.0, 0.0)
    if labels["shutter"] == "present":
        sides = rng.permutation(4)[: int(rng.integers(2, 5))]
        blades = [0.0] * 4
        for s in sides:
            blades[int(s)] = float(rng.uniform(0.06, 0.16))
        shutter = (blades[0], blades[1], blades[2], blades[3])
    want_complete = labels["skull"] == "complete"
    for attempt in range(2000):
        if attempt >= 1000:
            # Heavy shutters on every side can leave no room for a complete skull:
            # open them step by step (only ever reached after 1000 failed draws).
            shutter = (shutter[0] * 0.9, shutter[1] * 0.9, shutter[2] * 0.9, shutter[3] * 0.9)
        ratio = rng.uniform(*aspect)
        ry = rng.uniform(0.26, 0.40) if want_complete else rng.uniform(0.30, 0.62)
        rx = ry * ratio
        cx = 0.5 + rng.uniform(-0.12, 0.12)
        cy = 0.5 + rng.uniform(-0.12, 0.12) if want_complete else 0.5 + rng.uniform(-0.3, 0.3)
        tilt = rng.uniform(-12, 12)
        trial = RunParams(seed, labels, 0, cx, cy, rx, ry, tilt, side, shutter)
        clear = skull_clearance(trial)
        if (want_complete and clear >= SKULL_MARGIN) or (
            not want_complete and clear <= -SKULL_OVERSHOOT and min(rx, ry) < 0.48
        ):
            break
    else:  # pragma: no cover - the ranges above always admit both cases
        raise RuntimeError("could not place the skull")
    # Positioner angles consistent with the projection (PS3.3 C.8.7.5: primary = LAO+/RAO-);
    # obliques stay under 45 degrees, where mtici's frontal/lateral split puts them frontal.
    primary = {"ap": rng.uniform(-8, 8), "lateral": side * rng.uniform(85, 95),
               "oblique": side * rng.uniform(20, 40)}[proj]
    labels["suitable"] = suitable_rule(labels)
    params = RunParams(
        seed=seed, labels=labels, frames=int(rng.integers(frames[0], frames[1] + 1)),
        cx=float(cx), cy=float(cy), rx=float(rx), ry=float(ry), tilt=float(tilt), side=side,
        shutter=shutter,
        contrast_strength=float(rng.uniform(0.3, 0.6)) if labels["contrast"] == "present" else 0.0,
        bolus_peak=float(rng.uniform(0.25, 0.5)),
        max_shift=float(rng.uniform(*MOTION_RANGE[labels["motion"]])),
        device_kind=str(rng.choice(["coil", "stent"])) if labels["device"] == "present" else "",
        catheter=bool(rng.random() < 0.5),
        text_corner=int(rng.integers(4)) if labels["text"] == "present" else -1,
        noise_sigma=float(rng.uniform(*NOISE_RANGE[labels["noise"]])),
        primary_angle=round(float(primary), 1),
        secondary_angle=round(float(rng.uniform(-15, 15)), 1),
        frame_time_ms=float(rng.choice([125.0, 166.7, 250.0, 333.3, 500.0])),
    )
    # Drawn last, so every other parameter of a seed is what it was before styles came.
    perfusion = rng.random() < PERFUSION_SHARE
    residue = float(rng.uniform(0.0, 0.09))
    if perfusion and labels["contrast"] == "present" and proj in ("ap", "lateral"):
        params = replace(params, style="perfusion", bone_residue=residue)
    return params


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


class _Canvas:
    """A float mask drawn with PIL in normalised coordinates."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.img = Image.new("F", (size, size), 0.0)
        self.draw = ImageDraw.Draw(self.img)

    def xy(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.size, y * self.size) for x, y in pts]

    def line(self, pts: list[tuple[float, float]], width: float, value: float = 1.0) -> None:
        self.draw.line(self.xy(pts), fill=value, width=max(1, round(width * self.size)),
                       joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: float = 1.0,
                width: float = 0.0) -> None:
        box = self.xy([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        if width > 0:
            self.draw.ellipse(box, outline=value, width=max(1, round(width * self.size)))
        else:
            self.draw.ellipse(box, fill=value)

    def array(self) -> np.ndarray:
        return np.array(self.img, dtype=np.float32)


def _rotate(p: RunParams, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Head-frame points (units of the radii, origin at the centre) to the field."""
    t = math.radians(p.tilt)
    c, s = math.cos(t), math.sin(t)
    return [(p.cx + (u * p.rx) * c - (v * p.ry) * s, p.cy + (u * p.rx) * s + (v * p.ry) * c)
            for u, v in pts]


def _bone(p: RunParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """Skull outline and projection-specific anatomy (bone: what subtraction removes)."""
    cv = _Canvas(size)
    thick = 0.022 * p.ry / 0.35
    ring = _rotate(p, [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 90)])
    cv.line(ring + ring[:1], thick)
    proj = p.labels["projection"]
    if proj == "ap":
        cv.line(_rotate(p, [(0.0, -0.9), (0.0, 0.55)]), thick * 0.35, 0.6)  # falx/midline
        for sx in (-1, 1):
            cx, cy = _rotate(p, [(0.38 * sx, 0.45)])[0]
            cv.ellipse(cx, cy, 0.16 * p.rx, 0.13 * p.ry, 0.8, thick * 0.5)  # orbits
    elif proj == "oblique":
        cv.line(_rotate(p, [(0.3 * p.side, -0.9), (0.3 * p.side, 0.55)]), thick * 0.35, 0.6)
        cx, cy = _rotate(p, [(0.55 * p.side, 0.42)])[0]
        cv.ellipse(cx, cy, 0.14 * p.rx, 0.15 * p.ry, 0.8, thick * 0.5)
    else:  # lateral: face and skull base on the anterior side
        f = p.side
        cx, cy = _rotate(p, [(0.72 * f, 0.22)])[0]
        cv.ellipse(cx, cy, 0.12 * p.rx, 0.16 * p.ry, 0.8, thick * 0.5)  # orbit
        cv.line(_rotate(p, [(-0.75 * f, 0.55), (0.0, 0.35), (0.8 * f, 0.5)]), thick * 0.6, 0.7)
        cv.line(_rotate(p, [(0.85 * f, 0.45), (1.05 * f, 0.9), (0.7 * f, 1.25)]), thick * 0.6,
                0.7)  # maxilla/face profile
    bone = cv.array()
    return ndimage.gaussian_filter(bone, sigma=max(0.6, size / 400))


def _branch(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float,
            depth: int, out: list[tuple[list[tuple[float, float]], int]], spread: float) -> None:
    pts = [start]
    x, y = start
    steps = 6
    for _ in range(steps):
        angle += rng.normal(0, 0.25)
        x += math.cos(angle) * length / steps
        y += math.sin(angle) * length / steps
        pts.append((x, y))
    out.append((pts, depth))
    if depth < 3:
        for _ in range(int(rng.integers(2, 4))):
            k = int(rng.integers(2, steps + 1))
            _branch(rng, pts[k], angle + rng.uniform(-spread, spread), length * 0.62,
                    depth + 1, out, spread)


def _vessels(p: RunParams, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Any]]:
    """Arterial tree (1 = fully opacified) inside the head; returns the tree for devices."""
    proj, s = p.labels["projection"], p.side
    segments: list[tuple[list[tuple[float, float]], int]] = []
    scale = p.ry
    up = -math.pi / 2 + math.radians(p.tilt)
    if proj == "lateral":
        root = _rotate(p, [(0.05 * s, 0.95)])[0]
        siphon = _rotate(p, [(0.05 * s, 0.95), (0.15 * s, 0.55), (0.3 * s, 0.4),
                             (0.15 * s, 0.25)])
        segments.append((siphon, 0))
        top = siphon[-1]
        _branch(rng, top, up - 0.6 * s, 0.55 * scale, 1, segments, 0.7)  # MCA fan, posterior
        aca = _rotate(p, [(0.15 * s, 0.25), (0.45 * s, -0.05), (0.35 * s, -0.5),
                          (0.0, -0.78), (-0.35 * s, -0.8)])
        segments.append((aca, 1))
        del root
    else:
        off = 0.3 * s if proj == "oblique" else 0.0
        ica = _rotate(p, [(off + 0.25 * s, 1.0), (off + 0.28 * s, 0.6), (off + 0.22 * s, 0.25)])
        segments.append((ica, 0))
        bif = ica[-1]
        lateral = 0.0 if s > 0 else math.pi
        _branch(rng, bif, lateral + math.radians(p.tilt) - 0.25 * s, 0.5 * scale, 1, segments,
                0.8)  # MCA
        aca = _rotate(p, [(off + 0.22 * s, 0.25), (off + 0.03 * s, 0.05), (off, -0.5),
                          (off + 0.05 * s, -0.85)])
        segments.append((aca, 1))
    cv = _Canvas(size)
    widths = {0: 0.012, 1: 0.008, 2: 0.005, 3: 0.0035}
    for pts, depth in segments:
        cv.line(pts, widths[min(depth, 3)] * scale / 0.35)
    tree = cv.array()
    head = _Canvas(size)
    head.ellipse(p.cx, p.cy, p.rx, p.ry)  # untilted clip is close enough for a vessel mask
    tree *= ndimage.binary_dilation(head.array() > 0, iterations=2)
    return ndimage.gaussian_filter(tree, sigma=max(0.5, size / 512)), segments


def _blush(p: RunParams, size: int) -> np.ndarray:
    """Capillary blush: a broad, faint darkening of the injected territory."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    off = 0.0 if p.labels["projection"] == "lateral" else 0.4 * p.side * p.rx
    d = ((xx - p.cx - off) / (0.8 * p.rx)) ** 2 + ((yy - p.cy + 0.1 * p.ry) / (0.8 * p.ry)) ** 2
    return np.exp(-2.0 * d).astype(np.float32)


def _device(p: RunParams, size: int, rng: np.random.Generator, segments: list[Any]
            ) -> np.ndarray:
    cv = _Canvas(size)
    # Place the device on the MCA segment (or where it would be without contrast).
    pts = segments[min(2, len(segments) - 1)][0]
    x, y = pts[len(pts) // 2]
    r = 0.04 * p.ry / 0.35
    if p.device_kind == "coil":
        for _ in range(14):
            a = rng.uniform(0, 2 * math.pi)
            loop = [(x + r * rng.uniform(0.2, 1) * math.cos(a + k * 0.9),
                     y + r * rng.uniform(0.2, 1) * math.sin(a + k * 0.9)) for k in range(5)]
            cv.line(loop, 0.004, 1.0)
        cv.ellipse(x, y, r * 0.6, r * 0.6, 0.8)
    else:
        a = rng.uniform(0, 2 * math.pi)
        length, half = 3.5 * r, 0.35 * r
        dx, dy = math.cos(a), math.sin(a)
        nx, ny = -dy, dx
        zig = [(x + dx * length * k / 10 + nx * half * (1 if k % 2 else -1),
                y + dy * length * k / 10 + ny * half * (1 if k % 2 else -1)) for k in range(11)]
        cv.line(zig, 0.005, 0.9)
        cv.line([(x + nx * half, y + ny * half), (x + dx * length + nx * half,
                                                  y + dy * length + ny * half)], 0.005, 0.9)
        for k in (0, 10):  # radiopaque end markers
            cv.ellipse(x + dx * length * k / 10, y + dy * length * k / 10, 0.01, 0.01, 1.0)
    return ndimage.gaussian_filter(cv.array(), sigma=max(0.4, size / 800))


def _catheter(p: RunParams, size: int) -> np.ndarray:
    cv = _Canvas(size)
    off = 0.25 * p.side * p.rx
    x0 = p.cx + off
    cv.line([(x0 + 0.02, 1.02), (x0 + 0.01, 0.5 * (1 + p.cy + p.ry)), (x0, p.cy + 0.85 * p.ry)],
            0.005)
    return cv.array()


def _text(p: RunParams, size: int, rng: np.random.Generator) -> np.ndarray:
    img = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(img)
    # Same relative size at every matrix (a 128² training run and a 1024² clinical one).
    font = ImageFont.load_default(size=max(4, round(0.035 * size)))
    lines = [f"F {int(rng.integers(1, 99))}/{p.frames}", f"{rng.uniform(1, 30):.1f} fps",
             f"LAO {abs(p.primary_angle):.0f} CRA {abs(p.secondary_angle):.0f}"]
    text = "\n".join(lines[: int(rng.integers(2, 4))])
    bbox = draw.multiline_textbbox((0, 0), text, font=font)
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    m = round(0.03 * size)
    corner = p.text_corner
    x = m if corner in (0, 2) else size - w - m
    y = m if corner in (0, 1) else size - h - m
    draw.multiline_text((x, y), text, fill=1.0, font=font)
    return np.array(img, dtype=np.float32)


def _shifts(p: RunParams, rng: np.random.Generator) -> np.ndarray:
    """Per-frame (dy, dx) displacements against the mask frame 0, max norm = max_shift."""
    n = p.frames
    if p.max_shift == 0:
        return np.zeros((n, 2), dtype=np.float32)
    steps = rng.normal(0, 1, (n, 2))
    steps[0] = 0
    walk = np.cumsum(steps, axis=0)
    norm = np.linalg.norm(walk, axis=1).max()
    return (walk / max(norm, 1e-6) * p.max_shift).astype(np.float32)


def render_run(p: RunParams, size: int = 256, frames: int | None = None) -> np.ndarray:
    """Render the run as subtracted frames, (T, size, size) uint16 with 10 stored bits."""
    rng = np.random.default_rng(p.seed)
    n = frames or p.frames
    if frames is not None and frames != p.frames:
        p = RunParams(**{**p.to_dict(), "frames": frames})
    bone = _bone(p, size, rng)
    tree, segments = _vessels(p, size, rng)
    blush = _blush(p, size)
    perfusion = _perfusion(p, size, n) if p.style == "perfusion" else None
    if perfusion is not None and p.device_kind:
        segments = [([_clear_spot(p, perfusion, segments)], 0)]
    device = _device(p, size, rng, segments) if p.device_kind else None
    catheter = _catheter(p, size) if p.catheter else None
    text = _text(p, size, rng) if p.text_corner >= 0 else None
    lowfreq = ndimage.zoom(rng.normal(0, 0.015, (8, 8)).astype(np.float32), size / 8, order=1)
    static = (BACKGROUND + lowfreq).astype(np.float32)
    # Imperfect log subtraction leaves a faint outline of the skull even without motion.
    static -= p.bone_residue * bone
    if catheter is not None:
        static -= 0.35 * catheter
    shifts = _shifts(p, rng) * size
    t = np.arange(n, dtype=np.float32) / max(n - 1, 1)
    art = _gamma_variate(t, p.bolus_peak)
    par = _gamma_variate(t, min(0.95, p.bolus_peak + 0.25))
    grain = min(size, NOISE_GRAIN)
    out = np.empty((n, size, size), dtype=np.uint16)
    left, right, top, bottom = (round(v * size) for v in p.shutter)
    for i in range(n):
        frame = static.copy()
        dy, dx = float(shifts[i, 0]), float(shifts[i, 1])
        if perfusion is not None:
            moving = BACKGROUND * perfusion[i]
        else:
            moving = p.contrast_strength * (art[i] * tree + 0.25 * par[i] * blush)
        if device is not None:  # platinum coils and markers are far denser than contrast
            moving = moving + 0.7 * device
        if dy or dx:
            moved_bone = ndimage.shift(bone, (dy, dx), order=1, mode="nearest")
            # Misregistration: the live frame's bone no longer cancels the mask's.
            frame -= 0.45 * (moved_bone - bone)
            moving = ndimage.shift(moving, (dy, dx), order=1, mode="nearest")
        frame -= moving
        noise = rng.normal(0, p.noise_sigma, (grain, grain)).astype(np.float32)
        if grain != size:
            # Block-repeat: area-resizing to the network input gives back sigma at any matrix.
            k = -(-size // grain)
            noise = np.kron(noise, np.ones((k, k), np.float32))[:size, :size]
        frame += noise
        if p.labels["shutter"] == "present":
            frame[:, :left] = 0.03
            frame[:, size - right:] = 0.03
            frame[:top, :] = 0.03
            frame[size - bottom:, :] = 0.03
        if text is not None:  # annotations are burned in last, over the shutters too
            frame = np.maximum(frame, text)
        out[i] = np.clip(frame * MAX_VALUE, 0, MAX_VALUE).astype(np.uint16)
    return out


def _clear_spot(p: RunParams, perfusion: np.ndarray, segments: list[Any]) -> tuple[float, float]:
    """Where a device goes in a perfusion-style run: the point nearest the one the
    tree style would use whose blush stays under 30 % of the background at its peak.

    A coil inside a saturated overlay would be subtracted into the same black and
    its "present" label unreadable; operators do not drop coils there either.
    """
    pts = segments[min(2, len(segments) - 1)][0]
    x, y = pts[len(pts) // 2]
    size = perfusion.shape[-1]
    # Clear over the device's whole footprint (a stent spans ~0.15 of the field), not
    # only at its centre: half a coil over black blush reads as no coil.
    peak = ndimage.maximum_filter(perfusion.max(axis=0), size=max(3, round(0.16 * size)))
    rows, cols = np.nonzero(peak < 0.3)
    if len(rows) == 0:  # pragma: no cover - the field outside the head is always clear
        return float(x), float(y)
    cy, cx = (rows + 0.5) / size, (cols + 0.5) / size
    # Keep it off the shutters and away from the field's edge.
    margin = 0.06
    ok = (cx > margin + p.shutter[0]) & (cx < 1 - margin - p.shutter[1]) & \
        (cy > margin + p.shutter[2]) & (cy < 1 - margin - p.shutter[3])
    if ok.any():
        cx, cy = cx[ok], cy[ok]
    i = int(np.argmin((cx - x) ** 2 + (cy - y) ** 2))
    return float(cx[i]), float(cy[i])


#: Half-width of the head in a :mod:`ai.mtici.synthetic` view, as a fraction of its field.
_MTICI_HEAD = 0.86


def _perfusion(p: RunParams, size: int, frames: int) -> np.ndarray:
    """Opacity (T, size, size) in [0, 1] of a projected 3-D territory model, fitted
    into this run's skull: the view of :mod:`ai.mtici.synthetic` that matches the
    projection, its time axis resampled to ``frames`` and its head ellipse mapped onto
    the skull's (tilt included).  Its own noise and misregistration are off: this
    run's noise and motion labels add them.
    """
    from ai.mtici.synthetic import SyntheticConfig, generate_case

    # Overlay densities from mtici's earlier faint setting to its saturating one: the
    # blush of a real capillary phase varies as much from run to run.
    cfg = SyntheticConfig(noise=(0.0, 0.0), misregistration_px=0, overlay_gain=(2.5, 14.0))
    case = generate_case(np.random.default_rng([p.seed, 1]), cfg, "quality")
    view = case.frontal if p.labels["projection"] == "ap" else case.lateral
    # The injected hemisphere (AP) or the face (lateral) on the side the run says.
    flip = (p.side < 0) if p.labels["projection"] == "ap" else (p.side > 0)
    opacity = 1.0 - np.clip(view[:, :, ::-1] if flip else view, 0.0, 1.0)
    src = np.linspace(0.0, len(opacity) - 1.0, frames)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, len(opacity) - 1)
    w = (src - lo).astype(np.float32)[:, None, None]
    timed = opacity[lo] * (1 - w) + opacity[hi] * w
    m = view.shape[-1]
    # Output pixel (row, col) → field (y, x) → head frame (v, u) untilted → source pixel.
    t = math.radians(p.tilt)
    c, s = math.cos(t), math.sin(t)
    sx = m / 2.0 * _MTICI_HEAD / (p.rx * size)  # source pixels per output pixel, along u
    sy = m / 2.0 * _MTICI_HEAD / (p.ry * size)
    matrix = np.array([[c * sy, -s * sy], [s * sx, c * sx]], dtype=np.float64)
    centre_out = np.array([p.cy * size - 0.5, p.cx * size - 0.5])
    offset = np.array([m / 2.0 - 0.5, m / 2.0 - 0.5]) - matrix @ centre_out
    out = np.empty((frames, size, size), dtype=np.float32)
    for i in range(frames):
        out[i] = ndimage.affine_transform(timed[i], matrix, offset=offset, output_shape=(size, size),
                                          order=1, mode="constant", cval=0.0)
    return out


def _gamma_variate(t: np.ndarray, peak: float) -> np.ndarray:
    """Bolus passage normalised to a maximum of 1 at ``peak`` (fraction of the run)."""
    alpha = 3.0
    beta = max(peak, 1e-3) / alpha
    curve = (t / beta) ** alpha * np.exp(alpha - t / beta)
    return (curve / max(float(curve.max()), 1e-6)).astype(np.float32)
