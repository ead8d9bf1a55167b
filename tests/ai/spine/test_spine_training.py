"""Training is real: a tiny CCF-Net trained for a minute finds landmarks better than chance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai.core.models import load_model
from ai.spine.metrics import distances_mm
from ai.spine.module import SpineModule
from ai.spine.synthetic import synthetic_samples
from train.loop import train

TINY = {
    "network": {"widths": [8, 16, 32], "mid": 32},
    "preprocessing": {"input_size": 96},
    "training": {"epochs": 20, "batch_size": 16, "lr": 5e-3},
}


@pytest.mark.slow
def test_tiny_model_training_beats_chance(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    module = SpineModule()
    train_set = synthetic_samples(128, seed=101)
    val_set = synthetic_samples(24, seed=202)
    result = train(module, train_set, val_set, out_dir=tmp_path, config=TINY, seed=0,
                   progress=False, resume=False)
    # Chance for localisation: every landmark at its mean position over the training set
    # (the best guess that ignores the image).
    prior = np.nanmean(np.stack([s.coords for s in train_set]), axis=0)
    d_prior = np.concatenate([distances_mm(prior, module.truth(s)) for s in val_set])
    chance, chance_recall = float(np.nanmean(d_prior)), float(np.nanmean(d_prior <= 6.0))
    trained = result.metrics["mean_distance_mm"]
    assert trained < 0.75 * chance, (trained, chance)
    assert result.metrics["loc_recall_6mm"] > 2 * chance_recall, (result.metrics, chance_recall)
    assert result.history[-1]["loss"] < 0.65 * result.history[0]["loss"]
    # The saved version loads back and reproduces its own validation metrics.
    model = load_model(result.path, module)
    again = module.metrics(module.infer(model, val_set), [module.truth(s) for s in val_set])
    assert again["mean_distance_mm"] == pytest.approx(trained, rel=1e-4)
