"""The node's results as a person sees them in OHIF, in a real browser, offline.

One module-scoped run (conftest.py): the studies go into Orthanc (sources by
``storescu``; results by the node's outbox, and for one spine study by a running
``dicomnode run`` with the real spine module), ``deploy/viewer/serve.py`` serves the
OHIF build and Orthanc's DICOMweb on one 127.0.0.1 origin, and ``eyes.js`` opens each
study in Debian's Chromium and double-clicks our series.  These tests judge what it
saw.  Screenshots: ``tests/artifacts/viewer/*.png``.
"""
from __future__ import annotations

import math
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from viewer.conftest import ARTIFACTS, SRPoint, Study, listed_name, sr_points, tracking_uids

from dicomnode.results.sr import group_confidence, is_summary

pytestmark = [pytest.mark.viewer, pytest.mark.slow]

#: How far (screen pixels) an arrow tip may lie from where the SCOORD point falls.
TIP_TOLERANCE = 2.0


def _landmarks(study: Study) -> list[SRPoint]:
    """What the scenario's findings say OHIF must draw, with the SR's tracking UIDs."""
    sr, = study.of_kind("SR")
    points = [f for f in study.scenarios[0].findings.findings if f.point is not None]
    uids = tracking_uids(sr.dataset)
    assert len(uids) == len(points)
    out = []
    for uid, f in zip(uids, points, strict=True):
        assert f.point is not None and f.finding_site is not None
        image = f.references[0].sop_instance_uid
        out.append(SRPoint(uid, f.tracking_id, f.finding_site.meaning, f.point.column, f.point.row,
                           image, displayed=not out or image == out[0].image))
    return out


def _expected_screen_point(point: SRPoint, svg: dict[str, float], rows: int, cols: int) -> tuple[float, float]:
    """Where OHIF must put a SCOORD (column, row) when it fits the image to the viewport.

    SCOORD pixel coordinates have (0, 0) at the outer corner of the first pixel
    (PS3.3 C.18.6.1.1), so the image spans [0, cols] x [0, rows] and is centred.
    """
    scale = min(svg["width"] / cols, svg["height"] / rows)
    return (svg["width"] / 2 + (point.column - cols / 2) * scale,
            svg["height"] / 2 + (point.row - rows / 2) * scale)


def _arrow_tip(segments: list[list[float]]) -> tuple[float, float] | None:
    """The point where the shaft and both head lines of an arrow meet."""
    if len(segments) < 3:
        return None
    ends = [(s[0], s[1]) for s in segments] + [(s[2], s[3]) for s in segments]
    for x, y in ends:
        if all(min(math.hypot(s[0] - x, s[1] - y), math.hypot(s[2] - x, s[3] - y)) < 0.01
               for s in segments):
            return x, y
    return None


def landmark_problems(seen: dict[str, Any], points: list[SRPoint],
                      sources: dict[str, Dataset]) -> list[str]:
    """Every way the displayed landmarks are not shown as a reader expects."""
    annotations = seen["annotations"] or {"svg": None, "items": []}
    svg = annotations["svg"]
    drawn = {a["uid"]: a for a in annotations["items"]}
    problems = []
    for point in (p for p in points if p.displayed):
        item = drawn.get(point.uid)
        if item is None or svg is None:
            problems.append(f"{point.tracking_id}: not drawn")
            continue
        if point.finding_site not in item["text"]:
            problems.append(f"{point.tracking_id}: label {item['text']!r} lacks {point.finding_site!r}")
        tip = _arrow_tip(item["segments"])
        if tip is None:
            problems.append(f"{point.tracking_id}: no arrow")
            continue
        image = sources[point.image]
        x, y = _expected_screen_point(point, svg, int(image.Rows), int(image.Columns))
        miss = math.hypot(tip[0] - x, tip[1] - y)
        if miss > TIP_TOLERANCE:
            problems.append(f"{point.tracking_id}: arrow tip {miss:.1f} px from the point")
    return problems


def _sources(study: Study) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for sc in study.scenarios for ds in sc.sources}


def test_every_study_is_in_the_study_list(ohif: dict[str, Any], stack: dict[str, Any]) -> None:
    listing = ohif["seen"]["studyList"]["text"]
    for study in stack["studies"].values():
        assert listed_name(study.scenarios[0].sources[0]) in listing, study.name


@pytest.mark.parametrize("visit, series", [
    ("spine", ["AI spine: report", "AI spine: images", "T2 SAG"]),
    ("dsa", ["AI quality: report", "AI mtici: report", "AI quality: summary", "AI mtici: summary",
             "AI quality: images", "AI mtici: images", "DSA run"]),
    ("keyframes", ["AI keyframes: report", "AI keyframes: summary", "AI keyframes: images",
                   "LCA cine"]),
    ("node-spine", ["AI spine: report", "AI spine: images"]),
])
def test_results_are_listed_in_their_source_study(ohif: dict[str, Any], visit: str,
                                                  series: list[str]) -> None:
    thumbnails = ohif["visits"][visit]["thumbnails"]
    for description in series:
        assert any(description in t["text"] for t in thumbnails), (description, thumbnails)
    # OHIF lists an SR as a row without an image, headed by its modality.
    reports = [d for d in series if d.endswith((": report", ": summary"))]
    rows = [t["text"] for t in thumbnails if t["kind"] == "study-browser-thumbnail-no-image"]
    for description in reports:
        assert any(row.startswith("SR") and description in row for row in rows), (description, rows)


def test_spine_landmarks_are_drawn_at_their_scoord_points_with_their_labels(
        ohif: dict[str, Any], stack: dict[str, Any]) -> None:
    seen = ohif["opens"]["spine-sr"]
    assert seen["listed"]
    study = stack["studies"]["spine"]
    points = _landmarks(study)
    assert all(p.displayed for p in points)  # the scenario puts them on the mid slice
    assert landmark_problems(seen, points, _sources(study)) == []
    # Only our landmarks are drawn, each once, and OHIF shows its read-only SR viewport.
    uids = [a["uid"] for a in seen["annotations"]["items"]]
    assert sorted(uids) == sorted(p.uid for p in points)
    assert "SR" in seen["badge"]
    assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]
    # The group's Certainty of Finding is part of the label (OHIF prints each NUM).
    texts = {a["uid"]: a["text"] for a in seen["annotations"]["items"]}
    findings = [f for f in study.scenarios[0].findings.findings if f.point is not None]
    for point, finding in zip(points, findings, strict=True):
        if finding.confidence is None and len(finding.evaluations) == 1 and finding.evaluations[0].confidence:
            assert f"Certainty of Finding: {finding.evaluations[0].confidence * 100:.2f} %" in texts[point.uid]


def test_the_node_s_own_spine_sr_shows_its_landmarks_on_the_image(ohif: dict[str, Any],
                                                                   stack: dict[str, Any]) -> None:
    """``dicomnode run`` with the real spine module: what it delivered displays."""
    node = stack["node"]
    seen = ohif["opens"]["node-spine-sr"]
    assert seen["listed"]
    points = sr_points(node.results["SR"])
    assert points, "the node's spine SR has no landmark"
    assert landmark_problems(seen, points, node.sources) == []
    assert "SR" in seen["badge"]
    assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]


def test_an_sr_with_a_wrong_root_concept_shows_no_landmarks(ohif: dict[str, Any],
                                                           stack: dict[str, Any]) -> None:
    """The check above fails when the SR stops displaying: here for a title OHIF does not
    know, which makes OHIF fall back to its plain-text SR view."""
    seen = ohif["opens"]["wrong-root-sr"]
    assert seen["listed"]
    study = stack["studies"]["wrong-root"]
    problems = landmark_problems(seen, _landmarks(study), _sources(study))
    assert len(problems) == len(_landmarks(study))
    assert all(p.endswith("not drawn") for p in problems), problems
    assert "Diagnostic imaging report" in seen["viewportText"]


def _sc_dataset(stack: dict[str, Any], name: str) -> Dataset:
    if name == "node-spine-sc":
        return stack["node"].results["OT"]
    studies = stack["studies"]
    study, module = {"spine-sc": ("spine", None), "quality-sc": ("dsa", "quality"),
                     "mtici-sc": ("dsa", "mtici"), "keyframes-sc": ("keyframes", None)}[name]
    return studies[study].of_kind("SC", module)[0].dataset  # the series' first instance


@pytest.mark.parametrize("name", ["node-spine-sc", "spine-sc", "quality-sc", "mtici-sc",
                                  "keyframes-sc"])
def test_secondary_captures_display_their_pixels(ohif: dict[str, Any], stack: dict[str, Any],
                                                 name: str) -> None:
    """What is on screen is the SC's own picture, fitted to the viewport."""
    seen = ohif["opens"][name]
    assert seen["listed"] and seen["canvas"], seen["errors"]
    shot = np.asarray(Image.open(ARTIFACTS / seen["canvas"]["file"]).convert("RGB")).astype(float)
    picture = _sc_dataset(stack, name).pixel_array
    assert picture.ndim == 3 and picture.std() > 10  # an RGB image with something to see
    rows, cols = picture.shape[:2]
    height, width = shot.shape[:2]
    scale = min(width / cols, height / rows)
    w, h = round(cols * scale), round(rows * scale)
    x0, y0 = (width - w) // 2, (height - h) // 2
    expected = np.asarray(Image.fromarray(picture).resize((w, h), Image.BILINEAR)).astype(float)
    m = 3  # OHIF's smoothing and sub-pixel placement blur the outermost pixels
    on_screen = shot[y0 + m:y0 + h - m, x0 + m:x0 + w - m]
    difference = np.abs(on_screen - expected[m:h - m, m:w - m]).mean()
    assert difference < 12, f"{name}: mean difference {difference:.1f} of 255"


IMAGE_LEVEL = ["quality", "mtici", "keyframes"]


def _module_srs(ohif: dict[str, Any], module: str) -> list[dict[str, Any]]:
    opens = [o for name, o in ohif["opens"].items() if name.startswith(f"{module}-sr-")]
    assert opens, f"no SR of {module} was opened"
    return opens


def _findings(stack: dict[str, Any], module: str) -> list[Any]:
    study = stack["studies"]["keyframes" if module == "keyframes" else "dsa"]
    return [f for s in study.scenarios if s.findings.module == module for f in s.findings.findings]


def test_image_level_srs_are_listed_in_their_study(ohif: dict[str, Any]) -> None:
    for module in IMAGE_LEVEL:
        assert all(o["listed"] for o in _module_srs(ohif, module)), module


@pytest.mark.parametrize("module", IMAGE_LEVEL)
def test_image_level_srs_open_without_an_error(ohif: dict[str, Any], module: str) -> None:
    """OHIF 3.13.2 threw on TID 1501 groups without SCOORD ("Something went wrong"); each
    NUM's whole-frame region (sr._whole_frame) is what lets it open them."""
    for seen in _module_srs(ohif, module):
        assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]
        assert "Something went wrong" not in seen["viewportText"]


def _report_and_summary(stack: dict[str, Any], ohif: dict[str, Any],
                        module: str) -> tuple[tuple[Dataset, dict[str, Any]], tuple[Dataset, dict[str, Any]]]:
    study = stack["studies"]["keyframes" if module == "keyframes" else "dsa"]
    srs = study.of_kind("SR", module)
    opened = {o["series"]: o for o in _module_srs(ohif, module)}
    report, = [o.dataset for o in srs if not is_summary(o.dataset)]
    summary, = [o.dataset for o in srs if is_summary(o.dataset)]
    return ((report, opened[str(report.SeriesDescription)]),
            (summary, opened[str(summary.SeriesDescription)]))


@pytest.mark.parametrize("module", IMAGE_LEVEL)
def test_image_level_findings_are_drawn_on_their_image_labelled_with_their_text_and_certainty(
        ohif: dict[str, Any], stack: dict[str, Any], module: str) -> None:
    """The TID 1500 SR on its image: one outline per finding around the whole frame, its
    label the finding's text and its Certainty of Finding.  (The labels of one image share
    the outline, so they lie on top of each other at the image's right edge, where the
    viewport also clips them: the text is in the drawing, but the summary is where a
    person reads it.)"""
    (report, seen), _ = _report_and_summary(stack, ohif, module)
    drawn = {a["uid"]: a for a in seen["annotations"]["items"]}
    findings = _findings(stack, module)
    uids = tracking_uids(report)
    assert sorted(drawn) == sorted(uids), seen["errors"]
    assert "SR" in seen["badge"]
    for uid, finding in zip(uids, findings, strict=True):
        lines = drawn[uid]["lines"]
        # OHIF prints a Comment as "text: " and a NUM as "CodeMeaning: value unit".
        assert lines[0].startswith(finding.tracking_id), lines
        confidence, _ = group_confidence(finding)
        assert confidence is not None
        assert f"Certainty of Finding: {confidence * 100:.2f} %" in lines, lines
        for m in finding.measurements:
            assert f"{m.concept.meaning}: {m.value:.2f} {m.unit.value}" in lines, lines


def _overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def readable_texts(seen: dict[str, Any]) -> str:
    """What a person can read in the viewport: its plain text (OHIF's text view of an
    SR) and every annotation label that lies inside the viewport and clear of the others."""
    annotations = seen["annotations"] or {"svg": None, "items": []}
    svg, items = annotations["svg"], annotations["items"]
    clear = [
        a["text"] for a in items
        if svg is not None and a["box"]["x"] >= 0 and a["box"]["y"] >= 0
        and a["box"]["x"] + a["box"]["width"] <= svg["width"]
        and a["box"]["y"] + a["box"]["height"] <= svg["height"]
        and not any(_overlaps(a["box"], b["box"]) for b in items if b is not a)
    ]
    return "\n".join([seen["viewportText"], *clear])


@pytest.mark.parametrize("module", IMAGE_LEVEL)
def test_image_level_findings_are_readable_in_an_sr_of_their_module(
        ohif: dict[str, Any], stack: dict[str, Any], module: str) -> None:
    """Each finding's Tracking Identifier text ("mTICI 2b (82 %)") can be read in the
    viewer: in OHIF's text view of some SR of the module, or in a label of its own."""
    wanted = [f.tracking_id for f in _findings(stack, module)]
    shown = [readable_texts(o) for o in _module_srs(ohif, module)]
    assert any(all(t in text for t in wanted) for text in shown), (wanted, shown)
    # That SR is the summary, in OHIF's text view: its title, its section, each finding.
    _, (summary, seen) = _report_and_summary(stack, ohif, module)
    text = seen["viewportText"]
    assert "Diagnostic Imaging Report" in text and "Findings" in text, text
    assert all(t in text for t in wanted), text
    assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]


def test_no_request_leaves_127_0_0_1(ohif: dict[str, Any]) -> None:
    requests = ohif["seen"]["requests"]
    assert len(requests) > 50  # the app, its chunks, QIDO, WADO-RS metadata and frames
    hosts = {urllib.parse.urlsplit(r["url"]).hostname for r in requests
             if urllib.parse.urlsplit(r["url"]).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, hosts
    # Nothing but http(s) on that origin and in-page data/blob URLs.
    schemes = {urllib.parse.urlsplit(r["url"]).scheme for r in requests}
    assert schemes <= {"http", "data", "blob"}, schemes


def test_every_request_the_viewer_made_was_answered(ohif: dict[str, Any]) -> None:
    failed = [e for o in ohif["opens"].values() for e in o["errors"] if e.startswith("HTTP ")]
    assert failed == []


def test_screenshots_are_written(ohif: dict[str, Any]) -> None:
    for seen in ohif["opens"].values():
        path = Path(ARTIFACTS / seen["screenshot"])
        assert path.exists() and Image.open(path).size == (1400, 850), path
