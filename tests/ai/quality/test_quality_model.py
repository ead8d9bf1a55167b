"""quality: training is real, the bundled model meets its target, versions reach the findings."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ai.core.dicomio import study_views_from_files
from ai.core.models import load_model, read_metadata, save_model_version
from ai.quality.module import QualityModule
from dicomnode.storage.db import open_database
from dicomnode.storage.registry import active_version, ensure_bundled, register_version
from train.evaluate import evaluate
from train.loop import train

AUC_TARGET = 0.97


@pytest.fixture(scope="module")
def module() -> QualityModule:
    # One thread: on a shared 2-core runner OpenMP spinning makes 2 threads several times slower.
    torch.set_num_threads(1)
    return QualityModule()


@pytest.fixture(scope="module")
def run_files(module: QualityModule, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return module.write_dicom(module.synthetic(2, seed=77), tmp_path_factory.mktemp("runs"))


def test_a_tiny_model_trained_briefly_beats_chance_on_a_fresh_seed(
    module: QualityModule, tmp_path: Path
) -> None:
    tiny = {"preprocessing": {"size": 64},
            "network": {"block_inplanes": [8, 16, 32, 32]},
            "training": {"epochs": 6, "batch_size": 32, "lr": 3e-3}}
    result = train(module, module.synthetic(320, seed=1, size=128), [], out_dir=tmp_path,
                   config=tiny, seed=0, progress=False, version="tiny")
    model = load_model(result.path, module)
    auc = evaluate(module, model, module.synthetic(160, seed=99, size=128))["auc"]
    # Chance is 0.5 for every label.  Sixty optimiser steps at 64 px learn the shutters
    # outright and lift the mean clearly above chance (0.71 measured; SE of one AUC
    # on 160 cases is about 0.04); the bundled model's training reaches >= 0.97.
    assert auc["shutter"] > 0.9, auc
    assert auc["contrast"] > 0.65, auc
    assert np.mean([v for v in auc.values() if v is not None]) > 0.65, auc


@pytest.mark.slow
def test_the_bundled_model_meets_the_auc_target_on_a_fresh_seed(module: QualityModule) -> None:
    model = load_model(module.bundled_model_path(), module)
    metrics = evaluate(module, model, module.synthetic(300, seed=424242))
    assert all(v is not None and v >= AUC_TARGET for v in metrics["auc"].values()), metrics["auc"]


@pytest.mark.slow
def test_the_bundled_model_rates_the_runs_synth_mtici_writes_suitable(
    module: QualityModule, tmp_path: Path
) -> None:
    """The gate mtici reads: its synthetic pairs (256², perfusion phase, no skull
    residue) are contrast runs without severe motion or noise, so they pass."""
    from ai.mtici.module import MticiModule

    mtici = MticiModule()
    paths = mtici.write_dicom(mtici.synthetic(3, 20261), tmp_path)
    model = load_model(module.bundled_model_path(), module)
    rated = []
    for view in study_views_from_files(paths):
        for case in module.select(view).cases:
            findings = module.predict(case, model)
            rated.append((findings.gate["suitable"], findings.extra["classes"]))
    assert len(rated) == 6 and all(ok for ok, _ in rated), rated
    assert all(classes["contrast"] == "present" for _, classes in rated), rated


def test_the_bundled_model_is_small_and_documents_its_command(module: QualityModule) -> None:
    path = module.bundled_model_path()
    meta = read_metadata(path)
    assert (path / "weights.safetensors").stat().st_size < 4 * 2**20
    assert meta["module"] == "quality" and meta["command"].startswith("dicomnode train quality")
    assert meta["training_data"]["source"] == "synthetic"
    assert set(meta["metrics"]["auc"]) == {item["name"] for item in meta["config"]["labels"]}


def test_predict_returns_one_finding_per_label_and_the_gate(
    module: QualityModule, run_files: list[Path]
) -> None:
    model = load_model(module.bundled_model_path(), module)
    (view,) = study_views_from_files(run_files[:1])
    (case,) = module.select(view).cases
    findings = module.predict(case, model)
    names = [item["name"] for item in model.config["labels"]]
    assert len(findings.findings) == len(names)
    assert set(findings.gate) == {"suitable"}
    for f in findings.findings:
        assert f.references[0].sop_instance_uid == case.inputs[0].sop_instance_uid
        assert f.evaluations and 0.0 <= (f.confidence or 0) <= 1.0
    assert findings.extra["classes"]["suitable"] in ("yes", "no")
    (image,) = module.render(case, findings)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[2] == 3


def test_activate_and_rollback_change_the_version_that_reaches_the_findings(
    module: QualityModule, run_files: list[Path], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    db = open_database(f"sqlite:///{data_dir / 'index.sqlite'}", fsync=False)
    ensure_bundled(db, ["quality"])
    bundled = active_version(db, "quality")
    assert bundled is not None
    meta = read_metadata(Path(bundled.path))
    torch.manual_seed(3)
    other = save_model_version(tmp_path / "v2", "quality", module.network(meta["config"]),
                               meta["config"], version="site-2")
    register_version(db, other)
    (view,) = study_views_from_files(run_files[1:])
    (case,) = module.select(view).cases

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "models", *args,
                        "--data-dir", str(data_dir)], check=True, capture_output=True,
                       timeout=300)

    def findings_of_active() -> tuple[str, str]:
        row = active_version(db, "quality")
        assert row is not None
        found = module.predict(case, load_model(row.path, module))
        return found.model_version, found.model_sha256

    assert findings_of_active() == (bundled.version, bundled.sha256)
    cli("activate", "quality", "site-2")
    new = active_version(db, "quality")
    assert new is not None and new.version == "site-2"
    assert findings_of_active() == ("site-2", new.sha256) and new.sha256 != bundled.sha256
    cli("rollback", "quality")
    assert findings_of_active() == (bundled.version, bundled.sha256)


@pytest.mark.slow
def test_evaluate_prints_the_documented_json(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli.main", "evaluate", "quality", "--synthetic", "40",
         "--seed", "31337", "--timing-n", "1", "--json", "--data-dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(res.stdout)
    assert set(report) == {"module", "model_version", "n", "seed", "metrics"}
    assert report["module"] == "quality" and report["n"] == 40 and report["seed"] == 31337
    assert {"auc", "inference_s_per_case"} <= set(report["metrics"])
    assert 0 < report["metrics"]["inference_s_per_case"] < 30
