"""Result UIDs: deterministic, valid, distinct where they must be; supersession."""
from __future__ import annotations

import re
from dataclasses import replace

import pydicom
from results.conftest import make_settings
from results.factories import StudyHeader, make_xa
from results.scenarios import keyframes, quality, spine

from dicomnode.results.build import build_results
from dicomnode.results.uids import derive_uid, device_uid

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uids(objects: list) -> list[tuple[str, str, str]]:
    return [(o.kind, o.series_instance_uid, o.sop_instance_uid) for o in objects]


def test_building_twice_gives_identical_uids() -> None:
    for make in (quality, keyframes, spine):
        scenario = make()
        first = build_results(scenario.findings, scenario.images, scenario.sources, make_settings())
        again = build_results(scenario.findings, scenario.images, scenario.sources, make_settings())
        assert _uids(first) == _uids(again)
        every_uid = [[str(e.value) for e in o.dataset.iterall() if e.VR == "UI"] for o in first]
        every_uid_again = [[str(e.value) for e in o.dataset.iterall() if e.VR == "UI"]
                          for o in again]
        assert every_uid == every_uid_again


def test_every_result_uid_is_valid_and_under_the_node_root() -> None:
    settings = make_settings()
    scenario = keyframes()
    objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    for _, series_uid, sop_uid in _uids(objects):
        for uid in (series_uid, sop_uid):
            assert len(uid) <= 64 and UID_RE.match(uid)
            assert uid.startswith(settings.node.uid_root)
    all_uids = [u for t in _uids(objects) for u in t[2:]]
    assert len(set(all_uids)) == len(all_uids)
    # Each kind has its own new series.
    assert len({(k, s) for k, s, _ in _uids(objects)}) == len({k for k, _, _ in _uids(objects)})


def test_other_model_version_or_inputs_give_new_uids() -> None:
    scenario = quality()
    settings = make_settings()
    base = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    newer = build_results(replace(scenario.findings, model_version="1.0.1"), scenario.images,
                          scenario.sources, settings)
    late = make_xa(StudyHeader(study_instance_uid=str(scenario.sources[0].StudyInstanceUID)))
    more_inputs = build_results(scenario.findings, scenario.images, [*scenario.sources, late],
                                settings)
    sops = [{o.sop_instance_uid for o in objs} for objs in (base, newer, more_inputs)]
    assert not sops[0] & sops[1] and not sops[0] & sops[2] and not sops[1] & sops[2]


def test_device_observer_uid_is_stable_per_installation() -> None:
    root = make_settings().node.uid_root
    assert device_uid(root, "DICOMNODE") == device_uid(root, "DICOMNODE ")
    assert device_uid(root, "DICOMNODE") != device_uid(root, "OTHERNODE")
    assert device_uid(root, "DICOMNODE") != device_uid("1.2.3.", "DICOMNODE")


def test_derive_uid_separates_its_parts() -> None:
    assert derive_uid("1.2.", "ab", "c") != derive_uid("1.2.", "a", "bc")


def test_superseding_sr_lists_its_predecessor_and_gets_a_new_uid() -> None:
    scenario = spine()
    settings = make_settings()
    old = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    old_sr = next(o.dataset for o in old if o.kind == "SR")
    header = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(old_sr)), stop_before_pixels=True)
    new = build_results(scenario.findings, scenario.images, scenario.sources, settings,
                        predecessor=header)
    new_sr = next(o for o in new if o.kind == "SR")
    assert new_sr.sop_instance_uid != old_sr.SOPInstanceUID
    assert new_sr.supersedes == (str(old_sr.SOPInstanceUID),)
    pre = new_sr.dataset.PredecessorDocumentsSequence[0]
    assert pre.StudyInstanceUID == old_sr.StudyInstanceUID
    ref = pre.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == old_sr.SeriesInstanceUID
    assert (ref.ReferencedSOPSequence[0].ReferencedSOPClassUID,
            ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == (
        old_sr.SOPClassUID, old_sr.SOPInstanceUID)


def _bytes(ds: pydicom.Dataset) -> bytes:
    from dicomnode.results.store import encode

    return encode(ds)
