"""Training is real: a tiny model learns the synthetic grades in a few epochs; the
bundled model meets the spec's targets on a seed it never saw."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ai.core.models import load_model
from ai.mtici.labels import class_index
from ai.mtici.metrics import grade_metrics
from ai.mtici.module import MticiModule
from ai.mtici.network import NetworkConfig
from ai.mtici.synthetic import generate
from ai.mtici.training import TrainConfig, fit, predict_probabilities, prepare

TINY = NetworkConfig(clip=(8, 32, 32), channels=(4, 8, 8, 16, 16), head_dim=32, num_heads=2)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    # On a shared 2-core machine two intra-op threads spin against each other: measured
    # 3-6 s per prediction with 2 threads vs 0.2 s with 1 under load.
    torch.set_num_threads(1)


def test_tiny_model_beats_chance_in_a_few_epochs() -> None:
    train = prepare(generate(240, 101), TINY.clip, "4class")
    held = prepare(generate(120, 202), TINY.clip, "4class")
    net = fit(TINY, train, TrainConfig(epochs=4, batch_size=16, lr=3e-3, warmup_epochs=1, seed=0))
    metrics = grade_metrics(predict_probabilities(net, held[0], held[1]), held[2].numpy())
    # Four balanced classes: chance is 0.25 exact, ~0.6 within one grade.
    assert metrics["accuracy"] >= 0.40, metrics
    assert metrics["binary_auc"] >= 0.75, metrics


@pytest.mark.slow
def test_bundled_model_meets_targets_on_a_fresh_seed() -> None:
    from train.evaluate import evaluate

    module = MticiModule()
    model = load_model(module.bundled_model_path(), module)
    n = int(os.environ.get("MTICI_EVAL_N", "400"))
    # The same path as `dicomnode evaluate mtici --synthetic N --seed S`.
    m = evaluate(module, model, module.synthetic(n, 90210), timing_n=3, seed=90210)
    assert m["inference_s_per_case"] <= 2.0
    assert m["accuracy"] >= 0.85, m
    assert m["accuracy_within_one"] >= 0.98, m
    assert m["binary_auc"] >= 0.95, m
    assert m["accuracy_fused"] >= m["accuracy_best_single_view"] + 0.03, m


def test_geometry_alone_hides_defects_from_each_single_view() -> None:
    """The generator's overlaps make one view ambiguous and both views less so.

    ``apparent_grade_<view>`` is the grade a reader sees from the geometry alone
    (defect pixels with no perfused tissue on the ray); measured on 200 cases of seed
    7: frontal 0.33, lateral 0.40, both views 0.65 (0.37, 0.42, 0.59 before the two
    overlays were made complementary).
    """
    cases = generate(60, 303)
    acc = {
        view: float(np.mean([class_index(c.info[f"apparent_grade_{view}"]) == c.label() for c in cases]))
        for view in ("frontal", "lateral", "fused")
    }
    assert acc["fused"] >= max(acc["frontal"], acc["lateral"]) + 0.1, acc


def test_the_bundled_model_is_small_and_documents_its_train_command() -> None:
    from ai.core.models import read_metadata

    path = MticiModule().bundled_model_path()
    meta = read_metadata(path)
    assert (path / "weights.safetensors").stat().st_size < 4 * 2**20
    assert meta["module"] == "mtici" and meta["command"].startswith("dicomnode train mtici --synthetic")
    assert meta["training_data"]["source"] == "synthetic"
    assert meta["metrics"]["fusion_gain"] >= 0.03, meta["metrics"]
