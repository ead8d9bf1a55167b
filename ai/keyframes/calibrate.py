"""Fit the apex blend of a trained keyframes model on held-out synthetic runs.

The segments' apex (mean of the filling end and the wash-out start) and the frame of
most opacified vessel (:func:`~ai.keyframes.detection.opacification_apex`) are two
estimates of the apex with different errors; a least-squares blend of the two (and a
bias) is fitted on runs the model never saw and saved in the model's decoding config::

    python -m ai.keyframes.calibrate ai/keyframes/model --seed 777 --n 160 --version 1.2.0

Use seeds apart from training (``--seed`` of ``dicomnode train``), its validation
(10000) and any evaluation seed.  The metrics in metadata.json are then measured again
on the training validation set.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.core.models import LoadedModel, load_model
from ai.keyframes.detection import opacification_apex
from ai.keyframes.module import KeyframesModule
from ai.keyframes.transforms import PrepareRund

logger = logging.getLogger(__name__)


def apex_features(module: KeyframesModule, model: LoadedModel, samples: Sequence[Any]
                  ) -> np.ndarray:
    """(N, 3): the segments' apex, the opacification apex and the true apex per run."""
    prep = PrepareRund()
    rows = []
    for sample in samples:
        item = prep(sample)
        det = module.detect(model, frames=item.get("frames"), maps=item.get("maps"))
        start, end = det.start, det.end
        seg_apex = int(det.info.get("apex_segment", det.apex))
        curve_apex = opacification_apex(det.info["opacification"], start, end)
        rows.append((seg_apex, curve_apex, sample.keyframes[1]))
    return np.asarray(rows, np.float64)


def fit_blend(features: np.ndarray) -> dict[str, float]:
    """Least-squares ``{"segment", "curve", "bias"}`` from :func:`apex_features` rows."""
    a = np.c_[features[:, :2], np.ones(len(features))]
    w, *_ = np.linalg.lstsq(a, features[:, 2], rcond=None)
    return {"segment": round(float(w[0]), 4), "curve": round(float(w[1]), 4),
            "bias": round(float(w[2]), 4)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="model version directory (metadata.json)")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--version", required=True, help="the calibrated version's name")
    ap.add_argument("--val-seed", type=int, default=10000)
    ap.add_argument("--val-n", type=int, default=40)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    from train.evaluate import evaluate

    module = KeyframesModule()
    meta_path = args.model / "metadata.json"
    meta = json.loads(meta_path.read_text())
    # apex_features reads the segments' apex from the detection, whatever blend it has.
    model = load_model(args.model, module, "cpu")
    feats = apex_features(module, model, list(module.synthetic(args.n, args.seed)))
    blend = fit_blend(feats)
    before = float(np.abs(feats[:, 0] - feats[:, 2]).mean())
    fitted = np.c_[feats[:, :2], np.ones(len(feats))] @ [blend["segment"], blend["curve"],
                                                         blend["bias"]]
    logger.info("apex blend %s: mean |apex error| on the fitting runs %.2f -> %.2f frames",
                blend, before, float(np.abs(np.rint(fitted) - feats[:, 2]).mean()))
    meta["config"]["decoding"]["apex_blend"] = blend
    meta["version"] = args.version
    meta.setdefault("changelog", {})[args.version] = (
        f"same weights; apex blended from the segments and the opacification curve, fitted "
        f"on synthetic seed {args.seed} (n={args.n}): "
        f"python -m ai.keyframes.calibrate MODEL --seed {args.seed} --n {args.n} "
        f"--version {args.version}")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    model = load_model(args.model, module, "cpu")
    metrics = evaluate(module, model, module.synthetic(args.val_n, args.val_seed))
    meta["metrics"] = {**metrics, "val_n": args.val_n,
                       "inference_s_per_case": meta.get("metrics", {}).get("inference_s_per_case")}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("metrics on seed %d (n=%d): %s", args.val_seed, args.val_n, json.dumps(metrics))


if __name__ == "__main__":
    main()
