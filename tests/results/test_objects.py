"""What each result object says: read back with highdicom and pydicom, attribute by attribute."""
from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage
from results.conftest import Built, build_and_write, make_settings
from results.scenarios import keyframes, quality, spine

from ai.core import codes
from ai.core.contract import Finding, ImageReference, Measurement, RenderedImage
from dicomnode.results.build import BuildOptions, build_results
from dicomnode.results.sr import is_summary
from dicomnode.results.srread import canonical, content_items, read_findings
from dicomnode.results.store import encode
from dicomnode.results.uids import device_uid


def _code(item: pydicom.Dataset) -> tuple[str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator))


def _group_scoords(sr: pydicom.Dataset) -> int:
    """SCOORDs held by measurement groups themselves (TID 1410 regions)."""
    return sum(1 for g in content_items(sr) if g.ValueType == "CONTAINER"
               and _code(g.ConceptNameCodeSequence[0]) == ("125007", "DCM")
               for c in g.ContentSequence if c.ValueType == "SCOORD")


@pytest.mark.parametrize("name", ["quality", "mtici", "quality3d", "keyframes", "spine"])
def test_srread_gives_back_the_module_findings(all_results: dict[str, Built], name: str) -> None:
    built = all_results[name]
    expected = [canonical(f) for f in built.scenario.findings.findings]
    back: list[Finding] = []
    for _, path in built.reports():
        back.extend(read_findings(hd.sr.srread(path)))
    assert back == expected


def test_image_level_and_point_findings_go_into_separate_srs(tmp_path) -> None:
    scenario = spine()
    # One image-level finding added to the spine landmarks: two SRs, one kind each.
    mid = scenario.sources[2]
    extra = Finding("Image quality: diagnostic", codes.IMAGE_QUALITY,
                    (ImageReference(str(mid.SOPInstanceUID), str(mid.SOPClassUID)),),
                    confidence=0.9)
    findings = replace(scenario.findings, findings=(*scenario.findings.findings, extra))
    objects = build_results(findings, [], scenario.sources, make_settings())
    srs = [o.dataset for o in objects if o.kind == "SR"]
    assert len(srs) == 2
    # Only the point SR's groups hold a SCOORD themselves (TID 1410); the image-level
    # groups' SCOORDs are their NUMs' whole-frame regions.
    assert [_group_scoords(sr) for sr in srs] == [0, 11]
    assert [len(read_findings(sr)) for sr in srs] == [1, 11]


def test_sr_has_the_tid1500_structure_results_md_asks_for(all_results: dict[str, Built]) -> None:
    settings = make_settings()
    for name, built in all_results.items():
        source = built.scenario.sources[0]
        for obj, _ in built.reports():
            sr = obj.dataset
            assert sr.StudyInstanceUID == source.StudyInstanceUID
            assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in built.scenario.sources}
            assert sr.SOPClassUID == (Comprehensive3DSRStorage if name == "quality3d"
                                      else ComprehensiveSRStorage)
            assert _code(sr.ConceptNameCodeSequence[0]) == ("126000", "DCM")
            assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
                "COMPLETE", "UNVERIFIED", "PRELIMINARY")
            assert "CurrentRequestedProcedureEvidenceSequence" in sr  # Stone needs it
            items = list(content_items(sr))
            names = [_code(i.ConceptNameCodeSequence[0]) for i in items if "ConceptNameCodeSequence" in i]
            assert names.count(("121058", "DCM")) == 1  # one Procedure reported
            assert ("111028", "DCM") in names  # Image Library (OHIF requires it)
            uid_items = [i for i in items if _code(i.ConceptNameCodeSequence[0]) == ("121012", "DCM")]
            assert [str(i.UID) for i in uid_items] == [device_uid(settings.node.uid_root, "DICOMNODE")]
            schemes = [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence]
            assert schemes == ["99DICOMNODE"]
            groups = [i for i in items if _code(i.ConceptNameCodeSequence[0]) == ("125007", "DCM")]
            assert len(groups) == len(read_findings(sr))
            for group in groups:
                children = {_code(c.ConceptNameCodeSequence[0]): c for c in group.ContentSequence}
                assert {("112039", "DCM"), ("112040", "DCM"), ("121071", "DCM"), ("111001", "DCM"),
                        ("111003", "DCM"), ("111002", "DCM")} <= set(children)
                assert children[("111001", "DCM")].TextValue == built.scenario.findings.module
                assert children[("111002", "DCM")].TextValue == "sha256=" + "3f" * 32
                point_group = any(c.ValueType == "SCOORD" for c in group.ContentSequence)
                for num in (c for c in group.ContentSequence if c.ValueType == "NUM"):
                    # Every NUM has an INFERRED FROM child (older OHIF reads it unchecked):
                    # an image in a point group, a whole-frame region (OHIF 3.13) otherwise.
                    assert num.ContentSequence and all(
                        c.RelationshipType == "INFERRED FROM" for c in num.ContentSequence)
                    if point_group:
                        assert {c.ValueType for c in num.ContentSequence} == {"IMAGE"}
                        continue
                    sources = {str(s.SOPInstanceUID): s for s in built.scenario.sources}
                    for region in num.ContentSequence:
                        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
                        assert _code(region.ConceptNameCodeSequence[0]) == ("111030", "DCM")
                        (image,) = region.ContentSequence
                        assert image.RelationshipType == "SELECTED FROM"
                        source = sources[str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
                        cols, rows = float(source.Columns), float(source.Rows)
                        assert [float(v) for v in region.GraphicData] == [
                            0, 0, cols, 0, cols, rows, 0, rows, 0, 0]
                if not point_group:
                    # OHIF's label of the group starts with this text.
                    (comment,) = [c for c in group.ContentSequence
                                  if _code(c.ConceptNameCodeSequence[0]) == ("121106", "DCM")]
                    assert comment.TextValue == children[("112039", "DCM")].TextValue
                for scoord in (c for c in group.ContentSequence if c.ValueType == "SCOORD"):
                    assert scoord.GraphicType == "POINT"
                    image = scoord.ContentSequence[0]
                    assert _code(image.ConceptNameCodeSequence[0]) == ("111040", "DCM")


def test_confidence_is_certainty_of_finding_in_percent(all_results: dict[str, Built]) -> None:
    sr = all_results["mtici"].reports()[0][0].dataset
    nums = [i for i in content_items(sr) if i.ValueType == "NUM"
            and _code(i.ConceptNameCodeSequence[0]) == ("111012", "DCM")]
    assert [float(n.MeasuredValueSequence[0].NumericValue) for n in nums] == [82.0, 95.0]
    unit = nums[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert _code(unit) == ("%", "UCUM")
    # The grade references both runs.
    refs = {str(c.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for c in nums[0].ContentSequence if c.ValueType == "SCOORD"}
    assert refs == {str(s.SOPInstanceUID) for s in all_results["mtici"].scenario.sources}


def test_frame_numbers_are_num_in_ucum_frame_units_with_the_frame_referenced(
        all_results: dict[str, Built]) -> None:
    sr = all_results["keyframes"].reports()[0][0].dataset
    frames = {}
    for item in content_items(sr):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue.startswith("KF-"):
            mv = item.MeasuredValueSequence[0]
            assert _code(mv.MeasurementUnitsCodeSequence[0]) == ("{frame}", "UCUM")
            (region,) = item.ContentSequence  # the whole frame it was read off
            image = region.ContentSequence[0]
            frames[item.ConceptNameCodeSequence[0].CodeValue] = (
                float(mv.NumericValue), int(image.ReferencedSOPSequence[0].ReferencedFrameNumber))
    assert frames == {"KF-START": (7.0, 7), "KF-APEX": (18.0, 18), "KF-END": (33.0, 33)}
    (finding,) = read_findings(sr)
    assert finding.confidence == 0.8  # the group's certainty: the lowest of the three
    assert finding.references[0].frame_numbers == (7, 18, 33)


def test_secondary_capture_is_labelled_and_points_at_its_source_frame(
        all_results: dict[str, Built]) -> None:
    built = all_results["keyframes"]
    obj, path = built.of_kind("SC")[0]
    sc = pydicom.dcmread(path)
    source = built.scenario.sources[0]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.StudyInstanceUID, sc.PhotometricInterpretation, sc.SamplesPerPixel) == (
        source.StudyInstanceUID, "RGB", 3)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageComments.startswith("NOT FOR DIAGNOSIS")
    assert (sc.BodyPartExamined, sc.StudyDescription) == (source.BodyPartExamined,
                                                          source.StudyDescription)
    ref = sc.SourceImageSequence[0]
    assert (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber)) == (source.SOPInstanceUID, 18)
    assert _code(ref.PurposeOfReferenceCodeSequence[0]) == ("121322", "DCM")
    assert np.array_equal(sc.pixel_array, built.scenario.images[0].pixels)


def test_kos_flags_the_key_frames_without_forbidden_concept_names(
        all_results: dict[str, Built]) -> None:
    built = all_results["keyframes"]
    kos = pydicom.dcmread(built.of_kind("KO")[0][1])
    source = built.scenario.sources[0]
    assert _code(kos.ConceptNameCodeSequence[0]) == ("113000", "DCM")
    images = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    by_uid = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID): i for i in images}
    frames = [int(f) for f in by_uid[str(source.SOPInstanceUID)].ReferencedSOPSequence[0].ReferencedFrameNumber]
    assert frames == [7, 18, 33]
    assert all("ConceptNameCodeSequence" not in i for i in images)
    sc_uid = built.of_kind("SC")[0][0].sop_instance_uid
    assert sc_uid in by_uid  # the montage is a key object too
    assert kos.StudyDescription == source.StudyDescription


def test_gsps_draws_every_landmark_on_its_slice(all_results: dict[str, Built]) -> None:
    built = all_results["spine"]
    pr = pydicom.dcmread(built.of_kind("PR")[0][1])
    annotation = pr.GraphicAnnotationSequence[0]
    mid = built.scenario.sources[2]
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == mid.SOPInstanceUID
    points = [tuple(float(v) for v in g.GraphicData) for g in annotation.GraphicObjectSequence]
    expected = [(f.point.column, f.point.row) for f in built.scenario.findings.findings]
    assert points == expected
    assert [t.UnformattedTextValue for t in annotation.TextObjectSequence] == [
        f.tracking_id for f in built.scenario.findings.findings]


def test_frame_number_beyond_number_of_frames_is_refused(tmp_path) -> None:
    scenario = keyframes()
    run = scenario.sources[0]
    bad = Finding("Key frame end: 41", codes.KEYFRAMES,
                  (ImageReference(str(run.SOPInstanceUID), str(run.SOPClassUID), (41,)),),
                  measurements=(Measurement(codes.KEYFRAME_END, 41.0, codes.FRAME),))
    findings = replace(scenario.findings, findings=(bad,))
    with pytest.raises(ValueError, match=r"frame numbers \[41\] outside 1..40"):
        build_results(findings, [], scenario.sources, make_settings())


def test_reference_to_an_instance_outside_the_sources_is_refused() -> None:
    scenario = quality()
    stray = Finding("x", codes.IMAGE_QUALITY, (ImageReference("1.2.3.4", "1.2.840.10008.5.1.4.1.1.12.1"),),
                    confidence=0.5)
    findings = replace(scenario.findings, findings=(stray,))
    with pytest.raises(ValueError, match="not among the job's source instances"):
        build_results(findings, [], scenario.sources, make_settings())


def test_several_confident_measurements_in_one_group_are_refused_not_dropped() -> None:
    scenario = keyframes()
    run = scenario.sources[0]
    r = ImageReference(str(run.SOPInstanceUID), str(run.SOPClassUID))
    both = Finding("frames", codes.KEYFRAMES, (r,), measurements=(
        Measurement(codes.KEYFRAME_START, 3.0, codes.FRAME, 0.9, (3,)),
        Measurement(codes.KEYFRAME_END, 9.0, codes.FRAME, 0.8, (9,))))
    findings = replace(scenario.findings, findings=(both,))
    with pytest.raises(ValueError, match="set Finding.confidence"):
        build_results(findings, [], scenario.sources, make_settings())


def test_rendering_that_is_not_rgb_uint8_is_refused() -> None:
    scenario = quality()
    run = scenario.sources[0]
    grey = RenderedImage(np.zeros((8, 8), np.uint8), "grey",
                         ImageReference(str(run.SOPInstanceUID), str(run.SOPClassUID)))
    with pytest.raises(ValueError, match=r"pixels must be uint8 \(rows, columns, 3\)"):
        build_results(scenario.findings, [grey], scenario.sources, make_settings())


def test_unknown_sr_storage_option_names_the_setting() -> None:
    from dicomnode.results.build import BuildOptions

    with pytest.raises(ValueError, match="results.sr_storage"):
        BuildOptions(sr_storage="enhanced")


def test_sources_may_be_given_as_paths(tmp_path) -> None:
    built = build_and_write(quality(), make_settings(), tmp_path)
    from_datasets = build_results(built.scenario.findings, built.scenario.images,
                                  built.scenario.sources, make_settings())
    assert [o.sop_instance_uid for o in built.objects] == [o.sop_instance_uid for o in from_datasets]


def test_an_evaluation_carries_its_own_certainty_only_when_it_differs_from_the_group(
        all_results: dict[str, Built]) -> None:
    def children(name: str, concept: str) -> list[int]:
        sr = all_results[name].reports()[0][0].dataset
        return [len(i.get("ContentSequence", [])) for i in content_items(sr)
                if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == concept]

    assert children("quality", "DSA-CONTRAST") == [0]  # class probability = group certainty
    assert children("spine", "DISC-CLASS") == [1] * 7  # grade probability ≠ localisation score
    assert children("spine", "VERT-CLASS") == [0] * 5  # its one confidence is the group's


def test_summary_sr_states_each_image_level_finding_in_words(all_results: dict[str, Built]) -> None:
    built = all_results["mtici"]
    ((report_obj, _),) = built.reports()
    ((obj, _),) = built.summaries()
    report, summary = report_obj.dataset, obj.dataset
    assert summary.SOPClassUID == EnhancedSRStorage
    assert _code(summary.ConceptNameCodeSequence[0]) == ("18748-4", "LN")
    assert summary.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert summary.ContinuityOfContent == "SEPARATE"
    assert summary.StudyInstanceUID == report.StudyInstanceUID
    assert summary.SeriesInstanceUID not in {report.SeriesInstanceUID}
    assert (summary.SeriesNumber, summary.SeriesDescription) == (905, "AI mtici: summary")
    assert (summary.CompletionFlag, summary.VerificationFlag, summary.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    (findings,) = [i for i in summary.ContentSequence if i.ValueType == "CONTAINER"]
    assert _code(findings.ConceptNameCodeSequence[0]) == ("121070", "DCM")
    texts = [(_code(i.ConceptNameCodeSequence[0]), i.TextValue) for i in findings.ContentSequence]
    assert texts == [(("121071", "DCM"), f.tracking_id) for f in built.scenario.findings.findings]
    observer = [str(i.UID) for i in content_items(summary) if i.ValueType == "UIDREF"]
    assert observer == [device_uid(make_settings().node.uid_root, "DICOMNODE")]
    # Delivered after the TID 1500 SR, before the KOS of keyframes.
    assert [o.kind for o in all_results["keyframes"].objects] == ["SC", "SR", "SR", "KO"]
    assert is_summary(all_results["keyframes"].objects[2].dataset)


def test_summary_sr_is_off_by_default_and_only_for_image_level_findings(
        all_results: dict[str, Built]) -> None:
    assert all_results["quality3d"].summaries() == []
    scenario = spine()
    objects = build_results(scenario.findings, scenario.images, scenario.sources, make_settings(),
                            options=BuildOptions(summary_sr=True, gsps=True))
    assert not [o for o in objects if is_summary(o.dataset)]


def _header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` as the runner hands it back: read from its encoded file, pixels left out."""
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(ds)), stop_before_pixels=True)


def test_a_rerun_supersedes_the_summary_with_a_summary_and_the_report_with_a_report() -> None:
    scenario = quality()
    settings = make_settings()
    options = BuildOptions(summary_sr=True)
    old = build_results(scenario.findings, scenario.images, scenario.sources, settings,
                        options=options)
    old_report, old_summary = (_header(o.dataset) for o in old if o.kind == "SR")
    assert is_summary(old_summary) and not is_summary(old_report)
    new = build_results(scenario.findings, scenario.images, scenario.sources, settings,
                        [old_report, old_summary], options=options)
    report, summary = (o for o in new if o.kind == "SR")
    assert report.supersedes == (str(old_report.SOPInstanceUID),)
    assert summary.supersedes == (str(old_summary.SOPInstanceUID),)
    assert summary.sop_instance_uid != old_summary.SOPInstanceUID
    listed = summary.dataset.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert listed.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_summary.SOPInstanceUID
    # With the summary turned off, the old summary is superseded by the report.
    off = build_results(scenario.findings, scenario.images, scenario.sources, settings,
                        [old_report, old_summary])
    (report,) = (o for o in off if o.kind == "SR")
    assert set(report.supersedes) == {str(old_report.SOPInstanceUID), str(old_summary.SOPInstanceUID)}
