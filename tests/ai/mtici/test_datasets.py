"""The AmTICIS loader on a fixture laid out as the real data set, and the grade labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ai.mtici.datasets import load_amticis, parse_name, read_nifti, read_run_clip, write_nifti
from ai.mtici.dicomio import write_run
from ai.mtici.labels import CLASS_NAMES, class_index, successful_classes
from ai.mtici.synthetic import generate


@pytest.fixture(scope="module")
def amticis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny AmTICIS tree: .dcm and .nii.gz pairs, a #suffix, an orphan coronal file."""
    root = tmp_path_factory.mktemp("AmTICIS")
    cases = generate(3, 5)
    from datetime import datetime

    when = datetime(2026, 1, 1, 9)
    for view, token in (("frontal", "C"), ("lateral", "S")):
        write_run(cases[0], view, root / f"0001_T2B_{token}_anon.dcm", "1.2.3.1", 1, when)
        write_nifti(root / f"0002_T0_{token}#after_anon.nii.gz",
                    np.rint(getattr(cases[1], view) * 3000).astype(np.int16))
    write_run(cases[2], "frontal", root / "0003_T3_C_anon.dcm", "1.2.3.3", 1, when)  # no _S partner
    split = {"CORONAL_VIEW": {"train": ["0001_T2B_C_anon.dcm", "0003_T3_C_anon.dcm"],
                              "val": ["0002_T0_C#after_anon.dcm"]}}
    (root / "train_val_split.json").write_text(json.dumps(split))
    return root


def test_loader_pairs_views_reads_grades_and_split(amticis: Path) -> None:
    samples = load_amticis(amticis)
    assert [(s.case_id, s.grade, s.subset) for s in samples] == [
        ("0001_T2B_anon", "2b", "train"),
        ("0002_T0#after_anon", "0", "val"),
    ]
    first, second = samples
    assert first.frontal.name == "0001_T2B_C_anon.dcm" and first.lateral.name == "0001_T2B_S_anon.dcm"
    # The split lists .dcm names; the method's newer loader reads the .nii.gz of the same stem.
    assert second.frontal.name == "0002_T0_C#after_anon.nii.gz"
    assert second.info["suffix"] == "after"


def test_loader_reads_both_formats_to_the_same_clip(amticis: Path) -> None:
    for sample in load_amticis(amticis):
        for run in (sample.frontal, sample.lateral):
            clip = read_run_clip(run, (8, 32, 32))
            assert clip.shape == (1, 8, 32, 32)
            assert abs(float(clip.mean())) < 1e-4 and abs(float(clip.std()) - 1.0) < 1e-3


def test_nifti_round_trip_keeps_frames_in_order(tmp_path: Path) -> None:
    frames = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    write_nifti(tmp_path / "x.nii.gz", frames)
    assert np.array_equal(read_nifti(tmp_path / "x.nii.gz").transpose(2, 1, 0), frames)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_amticis(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "grade", "view"),
    [("0001_T2A_C_anon.dcm", "2a", "C"), ("0412_T3_S#middle_anon.nii.gz", "3", "S"), ("0007_T1_C_anon.dcm", "1", "C")],
)
def test_file_names_give_grade_and_view(name: str, grade: str, view: str) -> None:
    fields = parse_name(name)
    assert (fields["grade"], fields["view"]) == (grade, view)


def test_foreign_file_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not an AmTICIS file name"):
        parse_name("scan.dcm")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("4class", [0, 0, 1, 2, 3]), ("5class", [0, 1, 2, 3, 4]), ("binary", [0, 0, 0, 1, 1])],
)
def test_label_modes_group_grades_as_the_method(mode: str, expected: list[int]) -> None:
    assert [class_index(g, mode) for g in ("0", "1", "2a", "2b", "3")] == expected
    assert len(CLASS_NAMES[mode]) == max(expected) + 1
    assert all(c in successful_classes(mode) for c in {class_index("2b", mode), class_index("3", mode)})
