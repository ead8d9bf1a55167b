"""STA-IPCon's data format: ActivityNet-style ``vessel.json`` + one ``<id>.npy`` per run.

Layout (``methods-notes.md`` §2.5)::

    <root>/annotations/vessel.json
    <root>/image/<id>.npy          (T_feat, 4096) float: a 64 x 64 map per feature step

``vessel.json``::

    {"database": {"<id>": {"subset": "train" | "validation" | "test",
                           "fps": <float>, "duration": <seconds>,
                           "annotations": [{"segment": [t0, t1], "label": "rise",
                                            "label_id": 0}, ...]}}}

Segment times are seconds; frame = seconds * fps (the writer stores frame / fps, so
keyframes survive a round trip exactly).  Label 0 is the contrast filling segment
(start -> apex), label 1 the wash-out (apex -> end).  When the features are coarser
than the frames (STA-IPCon's SVS-Net features use a stride of 4), the stride is
inferred from ``duration * fps / T_feat`` and the run's ``fps`` becomes feature steps
per second, so keyframes are expressed on the feature grid.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ai.keyframes.synthetic import KeyframeSample
from ai.keyframes.transforms import MAP_SIZE

logger = logging.getLogger(__name__)

LABELS = {0: "rise", 1: "fall"}


def _paths(path: Path) -> tuple[Path, Path]:
    """(vessel.json, feature directory) from a root folder or the json itself."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "annotations" / "vessel.json", path / "vessel.json"):
            if cand.exists():
                return cand, path / "image"
        raise FileNotFoundError(f"{path}: no annotations/vessel.json")
    root = path.parent.parent if path.parent.name == "annotations" else path.parent
    return path, root / "image"


def load_vessel_json(path: Path | str, subset: str | None = None) -> list[KeyframeSample]:
    """Runs of a ``vessel.json`` dataset (optionally one subset), with their maps.

    Parameters
    ----------
    path : Path
        The dataset root (holding ``annotations/`` and ``image/``) or ``vessel.json``.
    subset : str, optional
        Keep only ``"train"``, ``"validation"`` or ``"test"`` runs.

    Raises
    ------
    ValueError
        An entry lacks ``fps``/``duration``, a segment of label 0 or 1, or its
        features are not 4096 wide.
    """
    json_path, feat_dir = _paths(Path(path))
    database = json.loads(json_path.read_text())["database"]
    samples: list[KeyframeSample] = []
    for run_id, entry in database.items():
        if subset is not None and entry.get("subset") != subset:
            continue
        npy = feat_dir / f"{run_id}.npy"
        if not npy.exists():
            logger.warning("%s: features %s missing, run skipped", json_path, npy)
            continue
        feats = np.load(npy)
        if feats.ndim != 2 or feats.shape[1] != MAP_SIZE * MAP_SIZE:
            raise ValueError(f"{npy}: expected (T, {MAP_SIZE * MAP_SIZE}), got {feats.shape}")
        try:
            fps, duration = float(entry["fps"]), float(entry["duration"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{json_path}: {run_id} needs numeric fps and duration") from exc
        segs = {int(a["label_id"]): [float(v) for v in a["segment"]]
                for a in entry.get("annotations", [])}
        if 0 not in segs or 1 not in segs:
            raise ValueError(f"{json_path}: {run_id} needs segments with label_id 0 and 1")
        stride = max(1, int(round(duration * fps / len(feats))))
        step_fps = fps / stride
        last = len(feats) - 1
        start = int(np.clip(round(segs[0][0] * step_fps), 0, last))
        apex = int(np.clip(round(0.5 * (segs[0][1] + segs[1][0]) * step_fps), start, last))
        end = int(np.clip(round(segs[1][1] * step_fps), apex, last))
        samples.append(KeyframeSample(
            run_id=str(run_id), fps=step_fps, start=start, apex=apex, end=end,
            maps=feats.reshape(-1, MAP_SIZE, MAP_SIZE).astype(np.float32),
            subset=str(entry.get("subset", "train")),
            info={"num_frames": len(feats), "feature_stride": stride, "source_fps": fps},
        ))
    if not samples:
        raise ValueError(f"{json_path}: no runs with features (subset={subset!r})")
    return samples


def write_vessel_json(samples: Iterable[KeyframeSample], root: Path | str,
                      subset: str | None = None) -> Path:
    """Write runs in the ``vessel.json`` + ``<id>.npy`` layout; returns the json path.

    The features are the run's ``maps`` or, for synthetic runs, the ground-truth
    vessel maps (the stand-in for SVS-Net's segmentation features).
    """
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "image").mkdir(parents=True, exist_ok=True)
    database: dict[str, Any] = {}
    for s in samples:
        feats = s.maps if s.maps is not None else s.vessel
        if feats is None:
            raise ValueError(f"{s.run_id}: no maps to write")
        np.save(root / "image" / f"{s.run_id}.npy",
                np.asarray(feats, np.float32).reshape(len(feats), -1))
        database[s.run_id] = {
            "subset": subset or s.subset,
            "fps": s.fps,
            "duration": len(feats) / s.fps,
            "annotations": [
                {"segment": [s.start / s.fps, s.apex / s.fps], "label": LABELS[0],
                 "label_id": 0},
                {"segment": [s.apex / s.fps, s.end / s.fps], "label": LABELS[1],
                 "label_id": 1},
            ],
        }
    out = root / "annotations" / "vessel.json"
    out.write_text(json.dumps({"version": "dicomnode-keyframes-1", "database": database},
                              indent=1))
    return out
