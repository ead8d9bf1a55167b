"""The bundled model meets the spec's targets on a synthetic seed it never saw."""
from __future__ import annotations

import json

import pytest
import torch

from ai.core.models import load_model, read_metadata
from ai.spine.module import SpineModule
from ai.spine.synthetic import synthetic_samples
from train.evaluate import evaluate

#: Never used by training (bundled model: seed 0, validation 10000).
FRESH_SEED = 4242


@pytest.fixture(scope="module")
def bundled() -> tuple[SpineModule, object]:
    torch.set_num_threads(2)
    module = SpineModule()
    return module, load_model(module.bundled_model_path(), module)


def test_bundled_model_metadata_names_its_command_and_data() -> None:
    meta = read_metadata(SpineModule().bundled_model_path())
    assert meta["module"] == "spine"
    assert meta["command"].startswith("dicomnode train spine")
    assert meta["training_data"]["source"] == "synthetic"
    assert (SpineModule().bundled_model_path() / "weights.safetensors").stat().st_size < 8e6
    json.dumps(meta)


@pytest.mark.slow
def test_bundled_model_meets_localisation_and_auc_targets(bundled: tuple) -> None:
    module, model = bundled
    samples = synthetic_samples(120, FRESH_SEED)
    m = evaluate(module, model, samples, timing_n=3, seed=FRESH_SEED)
    assert m["loc_recall_6mm_disc"] >= 0.97, m
    assert m["loc_recall_6mm_vertebra"] >= 0.97, m
    assert m["auc_disc"] >= 0.95, m
    assert m["auc_vertebra"] >= 0.95, m
    assert m["score"] >= 0.90, m
    # Reading three slices, preprocessing, flip TTA and decoding: ≤ 1 s per study.
    assert m["inference_s_per_case"] <= 1.0, m
