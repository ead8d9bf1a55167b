"""keyframes: synthetic ground truth, XA output, selection and the vessel.json format."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ai.core.dicomio import study_views_from_files
from ai.keyframes.datasets import load_vessel_json, write_vessel_json
from ai.keyframes.dicomio import write_dataset, xa_cine_dataset
from ai.keyframes.module import KeyframesModule
from ai.keyframes.synthetic import KEYFRAME_THRESHOLD, SyntheticRuns, draw_params, generate_run
from ai.keyframes.transforms import frame_rate, read_working_frames

DCIODVFY = Path("/usr/bin/dciodvfy")


@pytest.fixture(scope="module")
def module() -> KeyframesModule:
    return KeyframesModule()


def test_keyframes_are_where_the_ostium_curve_crosses_ten_percent() -> None:
    for i in range(50):
        p = draw_params(3, i)
        assert 30 <= p.num_frames <= 200
        c = p.curve(np.arange(p.num_frames) / p.fps)
        start, apex, end = p.keyframes
        assert 0 < start < apex < end < p.num_frames - 1
        assert c[start] >= KEYFRAME_THRESHOLD > c[start - 1]
        assert c[end] >= KEYFRAME_THRESHOLD > c[end + 1]
        assert c[apex] == pytest.approx(c.max(), abs=1e-3)


def test_contrast_fills_the_vessels_between_start_and_end() -> None:
    run = generate_run(7, 0)
    assert run.vessel is not None and run.frames is not None
    filled = run.vessel.reshape(run.num_frames, -1).sum(axis=1)
    assert filled[: run.start - 1].max() == 0  # nothing before the start
    assert filled[run.apex] > 20 * max(filled[run.start], 1e-3) or filled[run.apex] > 50
    # Distal filling delay: more vessel is opacified a few frames after the apex's root
    # peak than at the start.
    assert filled[run.apex:run.end].max() > filled[run.start]
    assert filled[-1] < filled[run.apex]


def test_same_seed_renders_the_same_run() -> None:
    a, b = SyntheticRuns(2, 5)[1].pixels()[0], SyntheticRuns(2, 5)[1].pixels()[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(SyntheticRuns(2, 6)[1].pixels()[0][:10], a[:10])


def _write(tmp: Path, name: str, fps: float, image_type: tuple[str, ...], study: str,
           description: str = "CORONARY LCA") -> Path:
    run = generate_run(11, len(name), size=128, supersample=1, num_frames=40, fps=fps)
    assert run.frames is not None
    ds = xa_cine_dataset(run.frames, fps, patient_id="SYNK0001", study_uid=study,
                         series_uid=generate_uid(), series_number=len(name),
                         when=dt.datetime(2026, 2, 2, 9), description=description,
                         image_type=image_type)
    return write_dataset(tmp / f"{name}.dcm", ds)


def test_cine_run_passes_dciodvfy_and_reads_back(tmp_path: Path) -> None:
    path = _write(tmp_path, "cine", 12.5, ("ORIGINAL", "PRIMARY", "SINGLE PLANE"),
                  generate_uid())
    res = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert errors == []
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.BodyPartExamined == "HEART" and "SUBTRACTION" not in ds.ImageType
    assert ds.PatientOrientation == ""
    frames, fps, _ = read_working_frames(path)
    assert frames.shape == (40, 64, 64)
    assert fps == pytest.approx(12.5)


@pytest.mark.parametrize(("attrs", "fps"), [
    ({"FrameTime": "66.667"}, 15.0),
    ({"CineRate": 30}, 30.0),
    ({"RecommendedDisplayFrameRate": 25}, 25.0),
    ({"FrameTimeVector": [0, 40, 40, 40]}, 25.0),
    ({}, None),
])
def test_frame_rate_comes_from_the_header(attrs: dict[str, object], fps: float | None) -> None:
    got = frame_rate(attrs)
    assert got == pytest.approx(fps, abs=0.01) if fps else got is None


def test_select_picks_the_cine_run_and_ignores_the_dsa_run(tmp_path: Path,
                                                          module: KeyframesModule) -> None:
    study = generate_uid()
    cine = _write(tmp_path, "cine", 15.0, ("ORIGINAL", "PRIMARY", "SINGLE PLANE"), study)
    _write(tmp_path, "dsa", 15.0, ("DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"),
           study, description="DSA CORONARY")
    (view,) = study_views_from_files(sorted(tmp_path.glob("*.dcm")))
    selection = module.select(view)
    assert len(selection.cases) == 1
    (case,) = selection.cases
    assert case.inputs[0].path == cine
    assert case.info["fps"] == pytest.approx(15.0, abs=0.01)


def test_select_gives_a_reason_when_only_a_dsa_run_exists(tmp_path: Path,
                                                          module: KeyframesModule) -> None:
    _write(tmp_path, "dsa", 15.0, ("DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"),
           generate_uid())
    (view,) = study_views_from_files([tmp_path / "dsa.dcm"])
    selection = module.select(view)
    assert selection.cases == ()
    assert "subtracted" in selection.reason


# A vessel.json in the layout of STA-IPCon's data/vessel (libs/datasets/vessel.py):
# ids like "train3", times in seconds, SVS-Net features every 4 frames.
VESSEL_JSON = """{
  "version": "1.0",
  "database": {
    "train3": {"subset": "train", "duration": 4.0, "fps": 15.0,
               "annotations": [{"label": "rise", "segment": [0.8, 1.6], "label_id": 0},
                               {"label": "fall", "segment": [1.6, 3.2], "label_id": 1}]},
    "test1": {"subset": "test", "duration": 6.4, "fps": 10.0,
              "annotations": [{"label": "fall", "segment": [2.4, 5.6], "label_id": 1},
                              {"label": "rise", "segment": [0.8, 2.4], "label_id": 0}]}
  }
}"""


def test_vessel_json_loader_reads_the_real_layout(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "image").mkdir()
    (tmp_path / "annotations" / "vessel.json").write_text(VESSEL_JSON)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "image" / "train3.npy", rng.random((15, 4096), dtype=np.float32))
    np.save(tmp_path / "image" / "test1.npy", rng.random((64, 4096), dtype=np.float32))
    runs = {r.run_id: r for r in load_vessel_json(tmp_path)}
    train = runs["train3"]
    # 4 s x 15 fps = 60 frames over 15 feature steps: stride 4, 3.75 steps per second.
    assert train.info["feature_stride"] == 4
    assert train.maps is not None and train.maps.shape == (15, 64, 64)
    assert train.keyframes == (3, 6, 12)
    test = runs["test1"]  # one feature per frame; annotations in any order
    assert test.info["feature_stride"] == 1
    assert test.keyframes == (8, 24, 56)
    assert [r.run_id for r in load_vessel_json(tmp_path / "annotations" / "vessel.json",
                                               subset="test")] == ["test1"]


def test_vessel_json_round_trip_keeps_keyframes(tmp_path: Path) -> None:
    runs = [generate_run(2, i) for i in range(3)]
    path = write_vessel_json(runs, tmp_path / "vessel")
    db = json.loads(path.read_text())["database"]
    assert set(db) == {r.run_id for r in runs}
    back = {r.run_id: r for r in load_vessel_json(tmp_path / "vessel")}
    for r in runs:
        assert back[r.run_id].keyframes == r.keyframes
        assert back[r.run_id].maps is not None
        np.testing.assert_allclose(back[r.run_id].maps, r.vessel)
