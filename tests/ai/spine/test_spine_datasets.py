"""The Tianchi loader on a hand-made fixture in the challenge's real layout, and round trips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai.spine.datasets import find_annotation, load_tianchi
from ai.spine.dicomio import SAGITTAL_IOP, SeriesSpec, mr_dataset, write_tianchi
from ai.spine.labels import IDENTIFICATIONS
from ai.spine.synthetic import synthetic_samples

STUDY = "1.2.826.0.1.3680043.8.498.100"
T2 = "1.2.826.0.1.3680043.8.498.101"
T1 = "1.2.826.0.1.3680043.8.498.102"


def _write_fixture(root: Path) -> dict[str, np.ndarray]:
    """lumbar_train150/study7/imageK.dcm (two series, files shuffled) + the JSON beside it."""
    folder = root / "lumbar_train150" / "study7"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4000, size=(7, 24, 20)).astype(np.uint16)
    # Slice k sits at x = 12 - 4k: ascending along the normal (−x) is k = 0..6.
    positions = np.array([[12.0 - 4 * k, -60.0, 70.0] for k in range(7)])
    t2 = SeriesSpec(pixels, T2, tuple(f"{T2}.{k}" for k in range(7)), 3, "T2_TSE_SAG",
                    positions, SAGITTAL_IOP, 0.6875, 4.0, 3000.0, 100.0)
    t1 = SeriesSpec(pixels[:3], T1, tuple(f"{T1}.{k}" for k in range(3)), 2, "T1_TSE_SAG",
                    positions[:3], SAGITTAL_IOP, 0.6875, 4.0, 500.0, 10.0)
    files = [(t2, k) for k in range(7)] + [(t1, k) for k in range(3)]
    order = [6, 2, 9, 0, 4, 7, 1, 5, 3, 8]  # the challenge's imageK names follow no order
    for name_k, file_k in enumerate(order):
        spec, k = files[file_k]
        mr_dataset(spec, k, STUDY, "1.2.3.4.5", "7").save_as(
            folder / f"image{name_k}.dcm", enforce_file_format=True)
    points = [
        {"coord": [10, 3], "tag": {"identification": "L1", "vertebra": "v2"}, "zIndex": 4},
        {"coord": [11, 8], "tag": {"identification": "L4-L5", "disc": "v1,v5"}, "zIndex": 4},
        {"coord": [12, 20], "tag": {"identification": "L5-S1", "disc": "v3"}, "zIndex": 4},
        {"coord": [9, 1], "tag": {"identification": "T11-T12", "disc": "v1"}, "zIndex": 4},
        {"coord": [9, 12], "tag": {"identification": "L3", "vertebra": ""}, "zIndex": 4},
    ]
    ann = [{"studyUid": STUDY, "version": "v0.1",
            "data": [{"instanceUid": f"{T2}.4", "seriesUid": T2,
                      "annotation": [{"annotator": 54, "data": {"point": points}}]}]},
           {"studyUid": "9.9.9", "data": [{"instanceUid": "9.9.9.1", "seriesUid": "9.9.9.2",
                                            "annotation": [{"data": {"point": []}}]}]}]
    (root / "lumbar_train150_annotation.json").write_text(json.dumps(ann, ensure_ascii=False))
    return {"pixels": pixels}


def test_tianchi_loader_reads_the_real_layout(tmp_path: Path) -> None:
    fixture = _write_fixture(tmp_path)
    (sample,) = load_tianchi(tmp_path / "lumbar_train150")  # the unknown study is skipped
    assert sample.study_instance_uid == STUDY and sample.series_instance_uid == T2
    # Annotated slice 4 of 7, kept with two neighbours each side, in position order.
    assert sample.sop_instance_uids == tuple(f"{T2}.{k}" for k in range(2, 7))
    assert sample.key_sop_instance_uid == f"{T2}.4"
    np.testing.assert_array_equal(sample.slices[sample.key_index], fixture["pixels"][4])
    assert sample.pixel_spacing == (0.6875, 0.6875)
    assert sample.info["z_index"] == 4
    i = IDENTIFICATIONS.index
    # Integer pixel indices become SCOORD pixel centres (+0.5).
    assert tuple(sample.coords[i("L1")]) == (10.5, 3.5)
    assert tuple(sample.coords[i("L5-S1")]) == (12.5, 20.5)
    assert sample.tags[i("L1")] == "v2"
    assert sample.tags[i("L4-L5")] == "v1,v5"
    assert sample.tags[i("L3")] == "v1"  # an empty tag reads as normal, as the evaluator does
    assert sample.tags[i("L2")] == "" and np.isnan(sample.coords[i("L2")]).all()
    labels = sample.labels()
    assert labels[i("L1")] == 1 and labels[i("L4-L5")] == 0 and labels[i("L5-S1")] == 1
    assert sample.schmorl().tolist() == [0, 0, 0, 0, 1, 0]


def test_annotation_is_found_from_the_json_or_the_folder(tmp_path: Path) -> None:
    _write_fixture(tmp_path)
    ann = tmp_path / "lumbar_train150_annotation.json"
    assert find_annotation(tmp_path / "lumbar_train150") == (tmp_path / "lumbar_train150", ann)
    assert find_annotation(ann) == (tmp_path / "lumbar_train150", ann)
    with pytest.raises(FileNotFoundError):
        find_annotation(tmp_path / "lumbar_train150" / "study7")


def test_synthetic_studies_round_trip_through_the_tianchi_format(tmp_path: Path) -> None:
    samples = synthetic_samples(2, seed=5)
    paths = write_tianchi(samples, tmp_path)
    assert len(paths) == 2 * (5 + 5 + 3)  # T1 and T2 sagittal, 3 axial, per study
    back = load_tianchi(tmp_path / "lumbar_synthetic")
    for a, b in zip(samples, back, strict=True):
        assert b.sop_instance_uids == a.sop_instance_uids
        np.testing.assert_array_equal(b.slices, a.slices)
        assert b.tags == a.tags
        # The JSON holds integer pixels: within half a pixel of the exact landmarks.
        assert np.abs(b.coords - a.coords).max() <= 0.5 + 1e-9
    ds = pydicom.dcmread(paths[5])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.BodyPartExamined == "LSPINE"
