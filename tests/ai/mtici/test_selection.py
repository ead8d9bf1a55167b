"""Which runs ``mtici`` pairs: angles, subtraction, the quality gate, latest pair, reasons."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ai.core.contract import Finding, Findings, ImageReference, StudyView
from ai.core.dicomio import study_views_from_files
from ai.mtici.dicomio import write_run, write_study
from ai.mtici.module import MticiModule
from ai.mtici.selection import SelectionConfig
from ai.mtici.synthetic import generate


def study_view_from_files(paths: list[Path]) -> StudyView:
    (study,) = study_views_from_files(paths)
    return study


@pytest.fixture(scope="module")
def case():
    return generate(1, 11)[0]


def test_pair_yields_one_case_with_frontal_first(case, tmp_path: Path) -> None:
    frontal, lateral = write_study(case, tmp_path)
    # Files handed over lateral first: the assignment must come from the angles.
    selection = MticiModule().select(study_view_from_files([lateral, frontal]))
    assert len(selection.cases) == 1
    chosen = selection.cases[0]
    assert [i.path for i in chosen.inputs] == [frontal, lateral]
    assert chosen.info["frontal_angle"] == 0.0
    assert chosen.info["lateral_angle"] == 90.0


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_one_view_only_gives_no_case_and_names_the_missing_view(case, tmp_path: Path, view: str) -> None:
    (path,) = write_study(case, tmp_path, views=(view,))
    selection = MticiModule().select(study_view_from_files([path]))
    assert selection.cases == ()
    missing = "lateral" if view == "frontal" else "frontal"
    assert selection.reason.startswith(f"no {missing} DSA run")


def test_run_gated_unsuitable_by_quality_is_skipped(case, tmp_path: Path) -> None:
    frontal, lateral = write_study(case, tmp_path)
    study = study_view_from_files([frontal, lateral])
    lateral_uid = next(i.sop_instance_uid for s in study.series for i in s.instances if i.path == lateral)
    gate = Findings(
        module="quality", model_version="q", model_sha256="0" * 64,
        findings=(Finding("suitable", MticiModule.codes[0],
                          (ImageReference(lateral_uid, "1.2.840.10008.5.1.4.1.1.12.1"),)),),
        gate={"suitable": False},
    )
    selection = MticiModule().select(study, prior={"quality": [gate]})
    assert selection.cases == ()
    assert "rated unsuitable by quality" in selection.reason
    # Configurable: with the gate off the pair is graded.
    relaxed = MticiModule(SelectionConfig(skip_unsuitable=False)).select(study, prior={"quality": [gate]})
    assert len(relaxed.cases) == 1


def test_latest_pair_after_treatment_is_chosen_unless_configured(case, tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.10.1495.77"
    paths = []
    for n, (hour, root) in enumerate(((9, "1.2.826.0.1.3680043.10.1495.1."), (11, "1.2.826.0.1.3680043.10.1495.2."))):
        for i, view in enumerate(("frontal", "lateral")):
            when = datetime(2026, 1, 1, hour, 0, i)
            paths.append(write_run(case, view, tmp_path / f"{n}{view}.dcm", study_uid, 10 * n + i, when, root))
    study = study_view_from_files(paths)
    latest = MticiModule().select(study).cases[0]
    assert [i.path for i in latest.inputs] == [tmp_path / "1frontal.dcm", tmp_path / "1lateral.dcm"]
    earliest = MticiModule({"pick": "earliest"}).select(study).cases[0]
    assert [i.path for i in earliest.inputs] == [tmp_path / "0frontal.dcm", tmp_path / "0lateral.dcm"]


def test_runs_hours_apart_are_not_paired(case, tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.10.1495.78"
    paths = [
        write_run(case, "frontal", tmp_path / "f.dcm", study_uid, 1, datetime(2026, 1, 1, 8, 0, 0)),
        write_run(case, "lateral", tmp_path / "l.dcm", study_uid, 2, datetime(2026, 1, 1, 12, 0, 0)),
    ]
    selection = MticiModule().select(study_view_from_files(paths))
    assert selection.cases == ()
    assert "within 300 s" in selection.reason


def test_bad_pick_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="pick"):
        SelectionConfig(pick="middle")
