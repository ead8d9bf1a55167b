"""Burned-in landmark overlay on the key sagittal slice (for the Secondary Capture)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ai.core.contract import Findings

#: Colours: normal vertebra, normal disc, abnormal (any grade other than v1).
NORMAL_VERTEBRA = (80, 220, 80)
NORMAL_DISC = (80, 200, 255)
ABNORMAL = (255, 90, 40)
MIN_SIZE = 512


def window(img: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Percentile window to uint8 (the same scaling the network's input uses)."""
    lo, hi = np.percentile(img, [lower, upper])
    out = (np.asarray(img, dtype=np.float64) - lo) / max(hi - lo, 1e-6)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_landmarks(slice_pixels: np.ndarray, findings: Findings) -> np.ndarray:
    """RGB uint8 (H', W', 3): the slice, upscaled to ≥ 512 px, with labelled points.

    Each landmark gets a ring and ``"<identification> <grade> <probability>"`` to its
    left (vertebrae) or right (discs), so labels of neighbours do not overlap.
    """
    grey = window(slice_pixels)
    h, w = grey.shape
    k = max(1, math.ceil(MIN_SIZE / max(h, w)))
    im = Image.fromarray(grey).convert("RGB").resize((w * k, h * k), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(im)
    font = _font(max(11, im.width // 45))
    r = max(3, im.width // 120)
    for f in findings.findings:
        if f.point is None:
            continue
        x, y = f.point.column * k, f.point.row * k
        grades = [e.value.meaning.split(" ")[0] for e in f.evaluations]
        abnormal = any(g != "v1" for g in grades)
        disc = "-" in f.tracking_id.split(":")[0]
        colour = ABNORMAL if abnormal else (NORMAL_DISC if disc else NORMAL_VERTEBRA)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(1, r // 2))
        conf = f.evaluations[0].confidence if f.evaluations else None
        text = f"{f.tracking_id.split(':')[0]} {','.join(grades)}"
        if conf is not None:
            text += f" {100 * conf:.0f}%"
        tw = draw.textlength(text, font=font)
        tx = x + 2 * r if disc else x - 2 * r - tw
        tx = min(max(tx, 2), im.width - tw - 2)
        ty = y - font.size / 2 if hasattr(font, "size") else y - 6
        draw.text((tx + 1, ty + 1), text, fill=(0, 0, 0), font=font)
        draw.text((tx, ty), text, fill=colour, font=font)
    return np.asarray(im, dtype=np.uint8)
