"""keyframes: the node's path (select, predict, render) and proof that training is real."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from ai.core import codes
from ai.core.dicomio import study_views_from_files
from ai.core.models import LoadedModel, load_model
from ai.keyframes.dicomio import write_dataset, xa_cine_dataset
from ai.keyframes.module import KeyframesModule
from ai.keyframes.render import FOOTER, HEADER, PANEL
from ai.keyframes.synthetic import KeyframeSample, SyntheticRuns, generate_run
from train.loop import train

#: A network small enough to train in seconds on two CPU cores (one ConvLSTM layer
#: before the single-channel one, a 16-wide three-level pyramid).
TINY = {"lstm_hidden": [2, 1], "embed_dim": 16, "num_heads": 2, "mlp_dim": 32, "levels": 3,
        "stem_blocks": 1, "regression_ranges": [[0, 4], [4, 8], [8, 10000]],
        "contrast_dim": 16, "random_patch": False}


def _tiny_model(module: KeyframesModule, network: torch.nn.Module | None = None
                ) -> LoadedModel:
    cfg = module.default_config()
    cfg["network"].update(TINY)
    net = network if network is not None else module.network(cfg)
    return LoadedModel(module="keyframes", version="tiny", sha256="0" * 64,
                       network=net.eval(), config=cfg, device=torch.device("cpu"),
                       path=Path("."))


def test_predict_reports_three_frames_of_the_source_and_renders_them(tmp_path: Path) -> None:
    module = KeyframesModule()
    run = generate_run(4, 1, size=128, supersample=1, num_frames=48, fps=15.0)
    assert run.frames is not None
    ds = xa_cine_dataset(run.frames, run.fps, patient_id="SYNK0042", study_uid=generate_uid(),
                         series_uid=generate_uid(), series_number=3,
                         when=dt.datetime(2026, 2, 2, 9))
    write_dataset(tmp_path / "run.dcm", ds)
    (view,) = study_views_from_files([tmp_path / "run.dcm"])
    (case,) = module.select(view).cases
    torch.manual_seed(0)
    findings = module.predict(case, _tiny_model(module))
    (finding,) = findings.findings
    assert finding.finding == codes.KEYFRAMES
    roles = [m.concept for m in finding.measurements]
    assert roles == [codes.KEYFRAME_START, codes.KEYFRAME_APEX, codes.KEYFRAME_END]
    numbers = [int(m.value) for m in finding.measurements]
    assert all(1 <= n <= 48 for n in numbers) and numbers == sorted(numbers)
    for m, n in zip(finding.measurements, numbers, strict=True):
        assert m.unit == codes.FRAME and m.frame_numbers == (n,)
        assert m.confidence is not None and 0.0 <= m.confidence <= 1.0
    (key,) = findings.key_frames
    assert key.sop_instance_uid == ds.SOPInstanceUID
    assert set(key.frame_numbers) == set(numbers)
    assert finding.references[0].frame_numbers == key.frame_numbers
    assert findings.extra["fps"] == pytest.approx(15.0, abs=0.01)
    (image,) = module.render(case, findings)
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (HEADER + PANEL + FOOTER, 3 * PANEL, 3)
    assert image.source.frame_numbers == key.frame_numbers


def _short_runs(n: int, seed: int) -> list[KeyframeSample]:
    """Runs at 7.5 fps (30-60 frames) as the vessel.json format holds them (maps only)."""
    out = []
    for s in SyntheticRuns(n, seed, size=64, supersample=1, fps=7.5):
        _, vessel = s.pixels()
        out.append(KeyframeSample(s.run_id, s.fps, s.start, s.apex, s.end, maps=vessel))
    return out


def test_training_a_tiny_model_beats_chance(tmp_path: Path) -> None:
    module = KeyframesModule()
    train_s, test_s = _short_runs(24, 0), _short_runs(16, 99)
    cfg = {"network": TINY, "training": {"epochs": 8, "batch_size": 4, "lr": 3e-3,
                                         "max_seq_len": 64, "contrast_weight": 0.1}}
    # One thread: the ConvLSTM is hundreds of tiny ops, and two threads spinning on a
    # shared, loaded CPU were measured 20-50x slower than one.
    torch.set_num_threads(1)
    result = train(module, train_s, [], out_dir=tmp_path, config=cfg, seed=0,
                   progress=False, resume=False, version="tiny")
    model = load_model(result.path, module=module, device="cpu")
    trained = module.metrics(module.infer(model, test_s), [module.truth(s) for s in test_s])
    # Chance: the keyframes at the training set's mean relative positions.
    rel = np.mean([[k / (s.num_frames - 1) for k in s.keyframes] for s in train_s], axis=0)
    prior = [{"keyframes": tuple(int(round(r * (s.num_frames - 1))) for r in rel)}
             for s in test_s]
    chance = module.metrics(prior, [module.truth(s) for s in test_s])
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert trained["average_deviation_frames"] < 0.6 * chance["average_deviation_frames"]
    assert trained["frame_f1"] > chance["frame_f1"] + 0.1
    assert not math.isnan(trained["map_tiou_0.3_0.7"])
