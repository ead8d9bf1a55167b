"""Synthetic coronary angiography runs with exact start / apex / end keyframes.

``methods-notes.md`` §2.6: a coronary-like 2-D tree (two trunks, three branch levels)
fed by an always-visible catheter, cardiac motion (a contraction + twist warp at the
heart rate), breathing (a slow translation of heart, catheter and diaphragm), a moving
background (spine, diaphragm, ribs and drifting blobs) and a global brightness flicker,
so that the mean intensity of a frame does not tell the contrast phase.

The contrast curve at the ostium rises (smoothstep) from 0 to 1, stays on a plateau of
0-3 frames and washes out (smoothstep) to 0; a point of the tree sees the same curve
delayed in proportion to its path length from the ostium (distal filling delay).  The
keyframes are defined on the sampled ostium curve: start = first frame at >= 10 % of
the peak, apex = the middle of the peak frames, end = last frame at >= 10 %.

Geometry is drawn in normalised coordinates (x = column, y = row, both in [0, 1]), so
one run can be rendered at 64 px for training or 512 px for a DICOM file.  Rendering
is at ``supersample`` times the output size and area-averaged down (partial volume).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Frame rates of coronary cine acquisitions (15 fps dominates clinically).
FRAME_RATES = (12.5, 15.0, 15.0, 15.0, 25.0, 30.0)
#: Root opacity fraction that defines start and end (methods-notes §2.6).
KEYFRAME_THRESHOLD = 0.1
#: Path-length bins of the distal filling delay.
_DELAY_BINS = 12
#: The background is smooth: rendered at this size at most and upsampled.
_BACKGROUND_SIZE = 128
#: Frames warped at once (bounds memory at 512 px).
_CHUNK = 16
#: Run lengths of the spec (modules.md: any frame count 30-200).
MIN_FRAMES, MAX_FRAMES = 30, 200


@dataclass
class KeyframeSample:
    """One angiography run with its keyframes (synthetic or from ``vessel.json``).

    Parameters
    ----------
    run_id : str
        Identifier (the ``vessel.json`` database key).
    fps : float
        Frame rate in frames per second.
    start, apex, end : int
        Keyframes as 0-based frame indices (``start <= apex <= end``).
    frames : numpy.ndarray, optional
        (T, H, W) uint8 X-ray frames (vessels dark), when pixels exist.
    vessel : numpy.ndarray, optional
        (T, 64, 64) float32 ground-truth map of contrast-filled vessel (area fraction).
    maps : numpy.ndarray, optional
        (T, 64, 64) float32 per-frame vessel maps / features from the real format.
    subset : str
        ``"train"``, ``"validation"`` or ``"test"``.
    info : dict
        Acquisition details (positioner angles, heart rate …).
    """

    run_id: str
    fps: float
    start: int
    apex: int
    end: int
    frames: np.ndarray | None = None
    vessel: np.ndarray | None = None
    maps: np.ndarray | None = None
    subset: str = "train"
    info: dict[str, Any] = field(default_factory=dict)
    params: RunParams | None = None
    size: int = 64
    supersample: int = 4

    @property
    def num_frames(self) -> int:
        """Number of frames of the run."""
        if self.params is not None:
            return self.params.num_frames
        for arr in (self.frames, self.maps, self.vessel):
            if arr is not None:
                return int(arr.shape[0])
        return int(self.info.get("num_frames", self.end + 1))

    def pixels(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(frames, ground-truth vessel maps); a lazy synthetic run is rendered now.

        Rendering is not cached: a training set of hundreds of runs would otherwise
        hold every frame in memory next to the cached vessel maps.
        """
        if self.frames is not None:
            return self.frames, self.vessel
        if self.params is None:
            raise ValueError(f"{self.run_id}: no pixels (a run from vessel.json has maps only)")
        frames, vessel, _ = render_run(self.params, self.size, self.supersample)
        return frames, vessel

    @property
    def keyframes(self) -> tuple[int, int, int]:
        """(start, apex, end), 0-based."""
        return (self.start, self.apex, self.end)


# ---------------------------------------------------------------------------
# Geometry: the vessel tree and the catheter as polylines.
# ---------------------------------------------------------------------------


@dataclass
class _Vessel:
    points: np.ndarray  # (N, 2) normalised (x, y)
    radius: float  # normalised
    path0: float  # path length from the ostium at points[0]


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, length: float,
          curl: float, step: float = 0.01) -> np.ndarray:
    """A smooth random-walk centreline of ``length`` from ``start`` heading ``angle``."""
    n = max(2, int(length / step))
    turns = np.cumsum(rng.normal(0.0, curl, n))
    turns = ndimage.gaussian_filter1d(turns, 2.0)
    angles = angle + turns
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _path_lengths(points: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def make_tree(rng: np.random.Generator, ostium: np.ndarray, levels: int = 3) -> list[_Vessel]:
    """Two trunks (LAD- and LCx-like) with ``levels`` levels of side branches."""
    vessels: list[_Vessel] = []
    base = rng.uniform(0.25, 0.75) * math.pi  # heading "down" the image (y grows downwards)
    trunks = [(base - rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.65)),
              (base + rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.55))]
    queue: list[tuple[np.ndarray, float, float, float, float, int]] = [
        (ostium, a, ln, rng.uniform(0.007, 0.009), 0.0, 0) for a, ln in trunks
    ]
    while queue:
        start, angle, length, radius, path0, level = queue.pop()
        pts = _walk(rng, start, angle, length, curl=0.05 + 0.03 * level)
        vessels.append(_Vessel(pts, radius, path0))
        if level >= levels:
            continue
        lengths = _path_lengths(pts)
        for _ in range(int(rng.integers(2, 4))):
            k = int(rng.integers(len(pts) // 5, max(len(pts) // 5 + 1, len(pts) - 2)))
            side = rng.choice([-1.0, 1.0])
            heading = math.atan2(*(pts[k + 1] - pts[k])[::-1])
            queue.append((pts[k], heading + side * rng.uniform(0.4, 1.0),
                          length * rng.uniform(0.4, 0.65), radius * rng.uniform(0.6, 0.75),
                          path0 + float(lengths[k]), level + 1))
    return vessels


def make_catheter(rng: np.random.Generator, ostium: np.ndarray) -> np.ndarray:
    """A catheter from the top edge of the image (the aorta) curving down to the ostium."""
    top = np.array([ostium[0] + rng.uniform(-0.25, 0.15), -0.05])
    mid = np.array([ostium[0] + rng.uniform(-0.3, -0.05), ostium[1] * rng.uniform(0.3, 0.7)])
    t = np.linspace(0.0, 1.0, 200)[:, None]
    # Quadratic Bezier: a smooth hook like a Judkins catheter seated in the ostium.
    return (1 - t) ** 2 * top + 2 * (1 - t) * t * mid + t ** 2 * ostium


# ---------------------------------------------------------------------------
# Rasterisation: tube thickness by nearest-centreline distance.
# ---------------------------------------------------------------------------


def rasterise(polylines: Sequence[tuple[np.ndarray, float, np.ndarray]], size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thickness, tube mask and per-pixel path length of tubes at ``size`` px.

    Each polyline is (points (N, 2), radius, path length per point (N,)), normalised.
    The thickness is the chord length through a circular tube (normalised units), the
    X-ray path length through the vessel, so attenuation scales with calibre.
    """
    centre = np.zeros((size, size), bool)
    rad = np.zeros((size, size), np.float32)
    path = np.zeros((size, size), np.float32)
    for pts, radius, plen in polylines:
        # Resample to half-pixel steps so the centreline has no gaps.
        total = float(_path_lengths(pts)[-1]) if len(pts) > 1 else 0.0
        n = max(2, int(total * size * 2))
        s = np.linspace(0.0, 1.0, n)
        cum = _path_lengths(pts)
        cum = cum / max(cum[-1], 1e-9)
        xs = np.interp(s, cum, pts[:, 0])
        ys = np.interp(s, cum, pts[:, 1])
        ps = np.interp(s, cum, plen)
        ix = np.clip((xs * size).astype(int), 0, size - 1)
        iy = np.clip((ys * size).astype(int), 0, size - 1)
        inside = (xs >= 0) & (xs < 1) & (ys >= 0) & (ys < 1)
        ix, iy, ps = ix[inside], iy[inside], ps[inside]
        bigger = ~centre[iy, ix] | (rad[iy, ix] < radius)
        centre[iy[bigger], ix[bigger]] = True
        rad[iy[bigger], ix[bigger]] = radius
        path[iy[bigger], ix[bigger]] = ps[bigger]
    if not centre.any():
        zero = np.zeros((size, size), np.float32)
        return zero, zero.astype(bool), zero
    dist, (ny, nx) = ndimage.distance_transform_edt(~centre, return_indices=True)
    d = dist.astype(np.float32) / size
    r = rad[ny, nx]
    thickness = 2.0 * np.sqrt(np.clip(r ** 2 - d ** 2, 0.0, None))
    # Sub-pixel tubes still attenuate along their centreline (partial volume).
    thickness = np.maximum(thickness, np.where(centre, np.minimum(2 * rad, 1.0 / size), 0.0))
    return thickness.astype(np.float32), thickness > 0, path[ny, nx]


# ---------------------------------------------------------------------------
# The contrast curve.
# ---------------------------------------------------------------------------


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


@dataclass(frozen=True)
class ContrastCurve:
    """Ostium opacity over time (seconds): rise, plateau, wash-out."""

    onset: float
    rise: float
    plateau: float
    fall: float
    fall_power: float = 1.0

    def __call__(self, t: np.ndarray) -> np.ndarray:
        up = _smoothstep((t - self.onset) / self.rise)
        t_down = self.onset + self.rise + self.plateau
        down = (1.0 - _smoothstep((t - t_down) / self.fall)) ** self.fall_power
        return np.where(t < t_down, up, down)

    def keyframes(self, num_frames: int, fps: float) -> tuple[int, int, int]:
        """(start, apex, end) 0-based from the curve sampled at the frame times."""
        c = self(np.arange(num_frames) / fps)
        above = np.flatnonzero(c >= KEYFRAME_THRESHOLD * c.max())
        peak = np.flatnonzero(c >= c.max() - 1e-3)
        return int(above[0]), int(peak[len(peak) // 2]), int(above[-1])


# ---------------------------------------------------------------------------
# The run generator.
# ---------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


@dataclass(frozen=True)
class RunParams:
    """What fixes a synthetic run's timing (its pixels are drawn from ``(seed, index)``)."""

    seed: int
    index: int
    fps: float
    num_frames: int
    curve: ContrastCurve

    @property
    def keyframes(self) -> tuple[int, int, int]:
        """(start, apex, end), 0-based."""
        return self.curve.keyframes(self.num_frames, self.fps)


def draw_params(seed: int, index: int, num_frames: int | None = None,
                fps: float | None = None) -> RunParams:
    """Frame rate, length and contrast curve of run ``index`` of ``seed``.

    Parameters
    ----------
    num_frames : int, optional
        Force the run length; the contrast timing is scaled so the whole curve fits.
    fps : float, optional
        Force the frame rate; default drawn from :data:`FRAME_RATES`.
    """
    rng = np.random.default_rng([seed, index, 8])
    fps = float(fps if fps is not None else rng.choice(FRAME_RATES))
    curve = ContrastCurve(onset=rng.uniform(0.2, 3.0), rise=rng.uniform(0.5, 1.3),
                          plateau=rng.uniform(0.0, 3.0) / fps, fall=rng.uniform(0.9, 2.4),
                          fall_power=rng.uniform(0.8, 1.6))
    duration = curve.onset + curve.rise + curve.plateau + curve.fall + rng.uniform(0.2, 2.5)
    natural = int(round(duration * fps))
    if num_frames is None:
        num_frames = int(np.clip(natural, MIN_FRAMES, MAX_FRAMES))
    if natural > num_frames:
        # Compress the timing so that the wash-out still ends inside the run.
        k = num_frames / natural
        curve = ContrastCurve(curve.onset * k, curve.rise * k, curve.plateau * k,
                              curve.fall * k, curve.fall_power)
    return RunParams(seed, index, fps, int(num_frames), curve)


def generate_run(seed: int, index: int, size: int = 64, supersample: int = 4,
                 num_frames: int | None = None, fps: float | None = None) -> KeyframeSample:
    """One synthetic run with pixels, reproducible from ``(seed, index)``.

    Parameters
    ----------
    seed, index : int
        Together they seed the run's random generators.
    size : int
        Output frame size in pixels (square).
    supersample : int
        Rendering factor before area-averaging to ``size`` (1 for large outputs).
    num_frames, fps :
        See :func:`draw_params`.

    Returns
    -------
    KeyframeSample
        ``frames`` (T, size, size) uint8, ``vessel`` (T, 64, 64) ground-truth maps.
    """
    params = draw_params(seed, index, num_frames, fps)
    frames, vessel, info = render_run(params, size, supersample)
    start, apex, end = params.keyframes
    return KeyframeSample(run_id=f"synthetic{seed}_{index}", fps=params.fps, start=start,
                          apex=apex, end=end, frames=frames, vessel=vessel, info=info)


def render_run(params: RunParams, size: int = 64, supersample: int = 4
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pixels of a run: (T, size, size) uint8 frames, (T, 64, 64) vessel maps, details."""
    rng = np.random.default_rng([params.seed, params.index, 9])
    fps, num_frames, curve = params.fps, params.num_frames, params.curve
    render = size * supersample
    ostium = np.array([rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.35)])
    tree = make_tree(rng, ostium)
    thick, tube, path = rasterise(
        [(v.points, v.radius, v.path0 + _path_lengths(v.points)) for v in tree], render)
    cath = make_catheter(rng, ostium)
    cath_thick, _, _ = rasterise([(cath, rng.uniform(0.0035, 0.005), np.zeros(len(cath)))],
                                 render)

    times = np.arange(num_frames) / fps
    # Distal filling delay: quantise the path length into bins so that the opacity of
    # every bin is one curve value per frame ((T, K) @ (K, pixels) instead of T x pixels).
    delay = path * rng.uniform(0.15, 0.45)  # seconds per image width of vessel path
    bins = np.linspace(0.0, max(float(delay.max()), 1e-3), _DELAY_BINS + 1)
    which = np.clip(np.digitize(delay, bins) - 1, 0, _DELAY_BINS - 1)
    onehot = torch.from_numpy(np.stack([(which == k) & tube for k in range(_DELAY_BINS)])
                              .reshape(_DELAY_BINS, -1).astype(np.float32))
    thick_k = onehot * torch.from_numpy(thick.reshape(1, -1)) * rng.uniform(25.0, 40.0)
    centres = 0.5 * (bins[:-1] + bins[1:])
    weights = curve(times[:, None] - centres[None]).astype(np.float32)  # (T, K)
    cath_t = torch.from_numpy(cath_thick * rng.uniform(60.0, 100.0))

    # Motion: cardiac contraction + twist about the heart centre, breathing translation.
    hr = rng.uniform(60.0, 100.0) / 60.0
    beat = 0.5 - 0.5 * np.cos(2 * math.pi * hr * times + rng.uniform(0, 2 * math.pi))
    squeeze = rng.uniform(0.05, 0.12) * beat
    twist = rng.uniform(-0.08, 0.08) * beat
    breath = np.sin(2 * math.pi * times / rng.uniform(3.0, 5.0) + rng.uniform(0, 2 * math.pi))
    shift = rng.uniform(0.01, 0.04) * breath[:, None] * np.array([rng.uniform(-0.3, 0.3), 1.0])
    heart = ostium + np.array([rng.uniform(-0.05, 0.15), rng.uniform(0.2, 0.35)])
    background = _background(rng, times, breath, min(render, _BACKGROUND_SIZE))
    gain = 1.0 + rng.uniform(0.01, 0.05) * rng.standard_normal(num_frames)
    gain *= 1.0 + rng.uniform(0.0, 0.1) * np.sin(2 * math.pi * times / rng.uniform(1.0, 4.0))
    brightness = rng.uniform(190.0, 235.0)
    # Quantum noise is drawn for a 512 px detector; averaging to ``size`` divides its
    # standard deviation by 512 / size, as the node's own downsampling does.
    noise = rng.uniform(4.0, 12.0) * size / 512.0

    xx, yy = _grid(render)
    frames = np.empty((num_frames, size, size), np.uint8)
    vessel = np.empty((num_frames, 64, 64), np.float32)
    for lo in range(0, num_frames, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, num_frames))
        n = sl.stop - sl.start
        w = torch.from_numpy(weights[sl])
        dense = torch.stack([(w @ thick_k).reshape(n, render, render),
                             ((w >= KEYFRAME_THRESHOLD).float() @ onehot).reshape(n, render, render),
                             cath_t.expand(n, render, render)], dim=1)
        # Inverse map: where in the reference frame each output pixel comes from.
        sx = torch.from_numpy(shift[sl, 0].astype(np.float32))[:, None, None]
        sy = torch.from_numpy(shift[sl, 1].astype(np.float32))[:, None, None]
        s = torch.from_numpy(1.0 + squeeze[sl].astype(np.float32))[:, None, None]
        cos = torch.from_numpy(np.cos(twist[sl]).astype(np.float32))[:, None, None]
        sin = torch.from_numpy(np.sin(twist[sl]).astype(np.float32))[:, None, None]
        dx, dy = xx - heart[0] - sx, yy - heart[1] - sy
        gx = heart[0] + s * (cos * dx - sin * dy)
        gy = heart[1] + s * (sin * dx + cos * dy)
        grid = torch.stack([gx, gy], dim=-1) * 2.0 - 1.0
        warped = F.grid_sample(dense, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        bg = F.interpolate(background[sl, None], size=render, mode="bilinear",
                           align_corners=False)[:, 0]
        image = brightness * torch.exp(-(warped[:, 0] + warped[:, 2] + bg))
        image *= torch.from_numpy(gain[sl].astype(np.float32))[:, None, None]
        if supersample > 1:
            image = F.avg_pool2d(image[:, None], supersample)[:, 0]
        # Quantum noise: variance grows with the detected signal.
        image += noise * torch.sqrt(image / 128.0) * torch.from_numpy(
            rng.standard_normal(image.shape).astype(np.float32))
        frames[sl] = image.clamp(0, 255).round().to(torch.uint8).numpy()
        vessel[sl] = F.adaptive_avg_pool2d((warped[:, 1:2] >= 0.5).float(), 64)[:, 0].numpy()

    info = {
        "num_frames": num_frames, "heart_rate_bpm": round(hr * 60, 1),
        "primary_angle": float(np.round(rng.uniform(-45, 45), 1)),
        "secondary_angle": float(np.round(rng.uniform(-30, 30), 1)),
        "curve": {"onset_s": curve.onset, "rise_s": curve.rise, "plateau_s": curve.plateau,
                  "fall_s": curve.fall},
    }
    return frames, vessel, info


def _background(rng: np.random.Generator, times: np.ndarray, breath: np.ndarray,
                size: int) -> torch.Tensor:
    """Log-attenuation of the anatomy behind the heart: spine, diaphragm, ribs, blobs."""
    xx, yy = _grid(size)
    t = torch.from_numpy(times.astype(np.float32))[:, None, None]
    b = torch.from_numpy(breath.astype(np.float32))[:, None, None]
    out = torch.zeros(len(times), size, size)
    # Spine: a vertical band with soft edges.
    cx, w = rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.14)
    out += rng.uniform(0.2, 0.45) * torch.sigmoid((w - (xx - cx).abs()) / 0.02)[None]
    # Diaphragm: a dome whose edge moves with breathing (large vertical excursion).
    y0, curv, amp = rng.uniform(0.65, 0.95), rng.uniform(0.2, 0.6), rng.uniform(0.04, 0.1)
    edge = y0 + curv * (xx - rng.uniform(0.3, 0.7)) ** 2
    out += rng.uniform(0.3, 0.8) * torch.sigmoid((yy[None] - edge[None] - amp * b) / 0.03)
    # Ribs: faint oblique bands that ride on breathing (ridge-like decoys).
    for _ in range(int(rng.integers(2, 5))):
        ang, off = rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.0)
        dist = (yy - off - ang * (xx - 0.5))[None] - 0.5 * amp * b
        out += rng.uniform(0.03, 0.1) * torch.exp(-(dist / rng.uniform(0.01, 0.025)) ** 2)
    # Drifting soft blobs (lung markings, heart shadow) with their own slow motion.
    for _ in range(int(rng.integers(3, 7))):
        bx, by = rng.uniform(0, 1), rng.uniform(0, 1)
        vx, vy = rng.normal(0, 0.03), rng.normal(0, 0.03)
        sig = rng.uniform(0.08, 0.25)
        px = bx + vx * t
        py = by + vy * t + 0.5 * amp * b
        blob = torch.exp(-((xx[None] - px) ** 2 + (yy[None] - py) ** 2) / (2 * sig ** 2))
        out += rng.uniform(-0.15, 0.25) * blob
    return out


class SyntheticRuns(Sequence[KeyframeSample]):
    """``n`` lazy runs: timing is drawn at once, pixels when :meth:`KeyframeSample.pixels`
    is called (index ``i`` is always the same run for a seed)."""

    def __init__(self, n: int, seed: int, size: int = 64, supersample: int = 4,
                 num_frames: int | None = None, fps: float | None = None) -> None:
        self.n, self.seed, self.size = n, seed, size
        self.supersample, self.num_frames, self.fps = supersample, num_frames, fps

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:  # Sequence protocol: int or slice
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(index)
        params = draw_params(self.seed, index % self.n, self.num_frames, self.fps)
        start, apex, end = params.keyframes
        return KeyframeSample(run_id=f"synthetic{self.seed}_{index % self.n}", fps=params.fps,
                              start=start, apex=apex, end=end, params=params, size=self.size,
                              supersample=self.supersample)

    def __iter__(self) -> Iterator[KeyframeSample]:
        return (self[i] for i in range(self.n))
