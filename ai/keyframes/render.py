"""The Secondary Capture for people: the start, apex and end frames side by side."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 384  # displayed frame edge, pixels
HEADER = 40
FOOTER = 28


def keyframe_montage(frames: list[np.ndarray], labels: list[str], title: str,
                     footer: str) -> np.ndarray:
    """RGB uint8 (HEADER + PANEL + FOOTER, 3 * PANEL, 3): three labelled frames.

    One window (the 0.5th-99.5th percentile of the three frames together) keeps the
    frames comparable: the apex frame must look darker in the vessels than start and
    end, which a per-frame window would hide.
    """
    stack = np.stack([f.astype(np.float32) for f in frames])
    lo, hi = np.percentile(stack, [0.5, 99.5])
    canvas = Image.new("RGB", (PANEL * len(frames), HEADER + PANEL + FOOTER), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    for i, (frame, label) in enumerate(zip(stack, labels, strict=True)):
        grey = np.clip((frame - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        pic = Image.fromarray(grey).convert("RGB")
        pic.thumbnail((PANEL, PANEL), Image.Resampling.LANCZOS)
        x0 = i * PANEL + (PANEL - pic.width) // 2
        canvas.paste(pic, (x0, HEADER + (PANEL - pic.height) // 2))
        draw.text((i * PANEL + 8, HEADER + 6), label, fill=(255, 230, 0), font=font)
        if i:  # a thin separator between panels
            draw.line([(i * PANEL, HEADER), (i * PANEL, HEADER + PANEL)], fill=(90, 90, 90))
    draw.text((8, 10), title, fill=(255, 255, 255), font=font)
    draw.text((8, HEADER + PANEL + 6), footer, fill=(160, 160, 160), font=small)
    draw.text((PANEL * len(frames) - 190, HEADER + PANEL + 6), "Not for diagnostic use",
              fill=(255, 200, 0), font=small)
    return np.asarray(canvas, dtype=np.uint8).copy()
