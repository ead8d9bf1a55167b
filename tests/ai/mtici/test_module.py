"""predict → Findings (grade, ≥ 2b flag, probabilities, both runs referenced) and render."""
from __future__ import annotations

import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import dcmtk

from ai.core.contract import Findings
from ai.core.dicomio import study_views_from_files
from ai.core.models import LoadedModel, ModelIntegrityError, load_model, save_model_version
from ai.mtici import labels as L
from ai.mtici.dicomio import XA_STORAGE, write_study
from ai.mtici.module import MticiModule
from ai.mtici.network import NetworkConfig, build_network
from ai.mtici.synthetic import generate


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    case = generate(1, 21)[0]
    paths = write_study(case, tmp_path_factory.mktemp("pair"))
    (study,) = study_views_from_files(paths)
    return case, MticiModule().select(study).cases[0]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(0)
    network = NetworkConfig(clip=(8, 32, 32), channels=(4, 8, 8, 16, 16), head_dim=32, num_heads=2)
    config = {"network": network.to_dict(), "preprocessing": {"clip": [8, 32, 32], "label_mode": "4class"}}
    directory = tmp_path_factory.mktemp("model")
    save_model_version(directory, "mtici", build_network(network), config, version="test-1")
    return load_model(directory, MticiModule())


def test_findings_carry_grade_flag_probabilities_and_both_runs(pair, small_model: LoadedModel) -> None:
    _, case = pair
    findings = MticiModule().predict(case, small_model)
    assert isinstance(findings, Findings)
    assert (findings.module, findings.model_version) == ("mtici", "test-1")
    assert findings.model_sha256 == small_model.sha256 and len(findings.model_sha256) == 64
    grade_finding, flag_finding = findings.findings
    uids = {i.sop_instance_uid for i in case.inputs}
    for finding in findings.findings:
        assert {r.sop_instance_uid for r in finding.references} == uids
        assert all(r.sop_class_uid == XA_STORAGE for r in finding.references)
    (grade_eval,) = grade_finding.evaluations
    assert grade_eval.concept == L.MTICI and grade_eval.value == L.grade_code(findings.extra["grade"])
    (flag_eval,) = flag_finding.evaluations
    assert flag_eval.concept == L.SUCCESSFUL_REPERFUSION
    probs = findings.extra["probabilities"]
    assert list(probs) == list(L.CLASS_NAMES["4class"])
    assert abs(sum(probs.values()) - 1.0) < 1e-4
    p_good = probs["2b"] + probs["3"]
    assert flag_eval.value == (L.YES if p_good >= 0.5 else L.NO)
    assert findings.extra["successful_reperfusion"] == (p_good >= 0.5)
    assert abs(sum(findings.extra["probabilities_frontal"].values()) - 1.0) < 1e-4


def test_render_shows_a_peak_frame_of_each_view_with_the_grade(pair, small_model: LoadedModel) -> None:
    case_data, case = pair
    module = MticiModule()
    findings = module.predict(case, small_model)
    images = module.render(case, findings)
    assert [img.source.sop_instance_uid for img in images] == [i.sop_instance_uid for i in case.inputs]
    for img, frames in zip(images, (case_data.frontal, case_data.lateral), strict=True):
        assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 3 and img.pixels.shape[2] == 3
        assert f"mTICI {findings.extra['grade']}" in img.caption
        # The peak frame is the most opacified one (lowest mean, vessels dark).
        assert img.source.frame_numbers == (int(np.argmin(frames.mean(axis=(1, 2)))) + 1,)
        # Burned-in text: yellow pixels exist.
        assert ((img.pixels[..., 0] > 200) & (img.pixels[..., 2] < 60)).any()


def test_synthetic_runs_are_xa_multiframe_dsa(pair) -> None:
    _, case = pair
    for inst, angle in zip(case.inputs, (0.0, 90.0), strict=True):
        ds = pydicom.dcmread(inst.path)
        assert ds.SOPClassUID == XA_STORAGE and ds.Modality == "XA"
        assert float(ds.PositionerPrimaryAngle) == angle
        assert int(ds.NumberOfFrames) == ds.pixel_array.shape[0] >= 16
        assert float(ds.FrameTime) > 0 and "SUBTRACTION" in ds.ImageType
        assert ds.BodyPartExamined == "HEAD" and ds.PatientOrientation == ""
    assert len({pydicom.dcmread(i.path).StudyInstanceUID for i in case.inputs}) == 1


def test_synthetic_runs_pass_dciodvfy(pair) -> None:
    _, case = pair
    for inst in case.inputs:
        out = subprocess.run([dcmtk("dciodvfy"), str(inst.path)], capture_output=True, text=True)
        problems = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith(("Error", "Warning"))]
        assert problems == [], problems


def test_weights_that_do_not_match_their_sha256_are_refused(small_model: LoadedModel, tmp_path: Path) -> None:
    save_model_version(tmp_path, "mtici", small_model.network, small_model.config, version="x")
    with open(tmp_path / "weights.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(tmp_path, MticiModule())


def test_module_is_registered_as_an_entry_point() -> None:
    found = {ep.name: ep for ep in entry_points(group="dicomnode.modules")}
    assert "mtici" in found, "pip install -e . after adding the entry point"
    module = found["mtici"].load()()
    assert module.name == "mtici" and module.depends_on == ("quality",) and module.level == "study"


@pytest.mark.parametrize(("mode", "classes"), [("4class", 4), ("5class", 5), ("binary", 2)])
def test_label_modes_set_the_head_size(mode: str, classes: int) -> None:
    net = build_network(NetworkConfig(num_classes=classes, clip=(8, 32, 32), channels=(4, 8, 8, 16, 16)))
    out = net.eval()(torch.zeros(1, 1, 8, 32, 32), torch.zeros(1, 1, 8, 32, 32))
    assert {k: v.shape[1] for k, v in out.items()} == {k: classes for k in out}
    assert len(L.CLASS_NAMES[mode]) == classes
