"""select(): the sagittal T2 series is chosen, decoys are ignored with reasons."""
from __future__ import annotations

from pathlib import Path

import pytest

from ai.core.contract import InstanceView, SeriesView, StudyView
from ai.core.dicomio import study_views_from_files
from ai.spine.module import SpineModule
from ai.spine.synthetic import synthetic_samples

SAG = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
AX = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _series(uid: str, desc: str, iop: list[float], xs: list[float], modality: str = "MR",
            ) -> SeriesView:
    insts = tuple(
        InstanceView(sop_instance_uid=f"{uid}.{k}", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                     path=Path(f"/nonexistent/{uid}/{k}.dcm"), instance_number=k + 1,
                     attributes={"ImageOrientationPatient": iop,
                                 "ImagePositionPatient": [x, -100.0, 100.0] if iop == SAG
                                 else [-100.0, -100.0, x]})
        for k, x in enumerate(xs))
    return SeriesView(series_instance_uid=uid, modality=modality, instances=insts,
                      series_description=desc)


def test_select_picks_sagittal_t2_from_a_written_study_and_ignores_decoys(
        tmp_path: Path) -> None:
    sample = synthetic_samples(1, seed=11)[0]
    module = SpineModule()
    paths = module.write_dicom([sample], tmp_path)
    (study,) = study_views_from_files(paths)
    assert {s.series_description for s in study.series} == {"T1 SAG", "T2 SAG", "T2 AX"}
    sel = module.select(study, {})
    (case,) = sel.cases
    assert case.series[0].series_instance_uid == sample.series_instance_uid
    # Middle slice ± one neighbour, in slice order: exactly the annotated slice and its two.
    assert [i.sop_instance_uid for i in case.inputs] == list(sample.sop_instance_uids[1:4])
    assert case.info["key_sop_instance_uid"] == sample.key_sop_instance_uid
    ignored = case.info["ignored"]
    assert "not sagittal" in " ".join(ignored.values())  # the axial decoy
    assert "preferred" in " ".join(ignored.values())  # the T1 sagittal decoy


def test_slices_are_ordered_by_position_not_instance_number() -> None:
    # Instance numbers 1..5 but positions shuffled: the key is the middle *position*.
    s = _series("1.2.3", "t2_tse_sag", SAG, [0.0, 8.0, -8.0, 4.0, -4.0])
    sel = SpineModule().select(StudyView("9.9", (s,)))
    (case,) = sel.cases
    xs = [i.attributes["ImagePositionPatient"][0] for i in case.inputs]
    assert xs == [4.0, 0.0, -4.0]  # descending x = ascending along the normal −x


def test_t2_is_preferred_over_other_sagittals_and_any_sagittal_is_the_fallback() -> None:
    t1 = _series("1.1", "T1 SAG", SAG, [0, 4, 8])
    stir = _series("1.2", "STIR SAG", SAG, [0, 4, 8])
    t2 = _series("1.3", "Sag T2 FSE", SAG, [0, 4, 8])
    ax = _series("1.4", "T2 AX", AX, [0, 4, 8])
    module = SpineModule()
    pick = module.select(StudyView("9", (t1, stir, ax, t2))).cases[0]
    assert pick.series[0].series_instance_uid == "1.3"
    fallback = module.select(StudyView("9", (t1, ax, stir))).cases[0]
    assert fallback.series[0].series_instance_uid == "1.2"
    only_t1 = module.select(StudyView("9", (ax, t1))).cases[0]
    assert only_t1.series[0].series_instance_uid == "1.1"


@pytest.mark.parametrize(("series", "why"), [
    ((_series("2.1", "T2 AX", AX, [0, 4, 8]),), "transverse, not sagittal"),
    ((_series("2.2", "LAT", SAG, [0], modality="CR"),), "not MR"),
    ((), "no series"),
])
def test_nothing_suitable_gives_no_case_and_a_reason(series: tuple[SeriesView, ...],
                                                     why: str) -> None:
    sel = SpineModule().select(StudyView("9", series))
    assert sel.cases == ()
    assert why in sel.reason
