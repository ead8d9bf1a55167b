"""keyframes: the bundled model meets the spec's targets on a fresh synthetic seed."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.core.dicomio import study_views_from_files
from ai.core.models import LoadedModel, load_model
from ai.keyframes.module import KeyframesModule
from train.evaluate import evaluate

#: A seed no bundled training or validation run used (training 0, validation 10000).
FRESH_SEED = 20260
N = 40

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module() -> KeyframesModule:
    return KeyframesModule()


@pytest.fixture(scope="module")
def model(module: KeyframesModule) -> LoadedModel:
    # One thread: the ConvLSTM is hundreds of tiny ops; on a loaded two-core machine two
    # threads spinning on each other were measured 10x slower than one.
    torch.set_num_threads(1)
    return load_model(module.bundled_model_path(), module, "cpu")


def test_bundled_model_meets_the_targets_on_a_fresh_seed(module: KeyframesModule,
                                                        model: LoadedModel) -> None:
    metrics = evaluate(module, model, module.synthetic(N, FRESH_SEED))
    assert metrics["average_deviation_frames"] <= 2.0, metrics
    assert metrics["frame_f1"] >= 0.90, metrics
    assert metrics["map_tiou_0.3_0.7"] >= 0.80, metrics


def test_bundled_model_finds_the_keyframes_of_a_512_pixel_dicom_run(
        module: KeyframesModule, model: LoadedModel, tmp_path: Path) -> None:
    samples = module.benchmark_samples(2, FRESH_SEED + 1)
    paths = module.write_dicom(samples, tmp_path)
    cases = [c for v in study_views_from_files(paths) for c in module.select(v).cases]
    assert len(cases) == 2
    for case, sample in zip(cases, samples, strict=True):
        cpu = time.process_time()
        findings = module.predict(case, model)
        cpu = time.process_time() - cpu
        got = [int(m.value) for m in findings.findings[0].measurements]
        want = [k + 1 for k in sample.keyframes]
        assert np.mean(np.abs(np.subtract(got, want))) <= 3.0, (got, want)
        # CPU seconds, reading included (wall time on a shared machine measures the
        # neighbours); the spec's budget is 1 s per 100-frame 512 x 512 run.
        assert cpu < 1.0, cpu
