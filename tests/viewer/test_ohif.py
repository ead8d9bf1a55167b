"""The node's results as a person sees them in OHIF, in a real browser, offline.

One module-scoped run (conftest.py): the studies go into Orthanc (sources by
``storescu``, results by the node's outbox), ``deploy/viewer/serve.py`` serves the
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
from viewer.conftest import ARTIFACTS, Study, listed_name, tracking_uids

from ai.core.contract import Finding

pytestmark = [pytest.mark.viewer, pytest.mark.slow]

#: How far (screen pixels) an arrow tip may lie from where the SCOORD point falls.
TIP_TOLERANCE = 2.0


def _landmarks(study: Study) -> list[tuple[str, Finding]]:
    """(tracking UID, finding) of each point landmark, in the SR's document order."""
    sr, = study.of_kind("SR")
    points = [f for f in study.scenarios[0].findings.findings if f.point is not None]
    uids = tracking_uids(sr.dataset)
    assert len(uids) == len(points)
    return list(zip(uids, points, strict=True))


def _expected_screen_point(finding: Finding, svg: dict[str, float], rows: int, cols: int) -> tuple[float, float]:
    """Where OHIF must put a SCOORD (column, row) when it fits the image to the viewport.

    SCOORD pixel coordinates have (0, 0) at the outer corner of the first pixel
    (PS3.3 C.18.6.1.1), so the image spans [0, cols] x [0, rows] and is centred.
    """
    assert finding.point is not None
    scale = min(svg["width"] / cols, svg["height"] / rows)
    return (svg["width"] / 2 + (finding.point.column - cols / 2) * scale,
            svg["height"] / 2 + (finding.point.row - rows / 2) * scale)


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


def landmark_problems(seen: dict[str, Any], study: Study) -> list[str]:
    """Every way the landmarks of ``study``'s SR are not shown as a reader expects."""
    annotations = seen["annotations"] or {"svg": None, "items": []}
    svg = annotations["svg"]
    drawn = {a["uid"]: a for a in annotations["items"]}
    source = study.scenarios[0].sources[0]
    problems = []
    for uid, finding in _landmarks(study):
        item = drawn.get(uid)
        if item is None or svg is None:
            problems.append(f"{finding.tracking_id}: not drawn")
            continue
        assert finding.finding_site is not None
        if finding.finding_site.meaning not in item["text"]:
            problems.append(f"{finding.tracking_id}: label {item['text']!r} lacks "
                            f"{finding.finding_site.meaning!r}")
        tip = _arrow_tip(item["segments"])
        if tip is None:
            problems.append(f"{finding.tracking_id}: no arrow")
            continue
        x, y = _expected_screen_point(finding, svg, int(source.Rows), int(source.Columns))
        miss = math.hypot(tip[0] - x, tip[1] - y)
        if miss > TIP_TOLERANCE:
            problems.append(f"{finding.tracking_id}: arrow tip {miss:.1f} px from the point")
    return problems


def test_every_study_is_in_the_study_list(ohif: dict[str, Any], stack: dict[str, Any]) -> None:
    listing = ohif["seen"]["studyList"]["text"]
    for study in stack["studies"].values():
        assert listed_name(study.scenarios[0].sources[0]) in listing, study.name


@pytest.mark.parametrize("visit, series", [
    ("spine", ["AI spine: report", "AI spine: images", "T2 SAG"]),
    ("dsa", ["AI quality: report", "AI mtici: report", "AI quality: images", "AI mtici: images",
             "DSA run"]),
    ("keyframes", ["AI keyframes: report", "AI keyframes: images", "LCA cine"]),
])
def test_results_are_listed_in_their_source_study(ohif: dict[str, Any], visit: str,
                                                  series: list[str]) -> None:
    thumbnails = ohif["visits"][visit]["thumbnails"]
    for description in series:
        assert any(description in t["text"] for t in thumbnails), (description, thumbnails)
    # OHIF lists an SR as a row without an image, headed by its modality.
    reports = [d for d in series if d.endswith(": report")]
    rows = [t["text"] for t in thumbnails if t["kind"] == "study-browser-thumbnail-no-image"]
    for description in reports:
        assert any(row.startswith("SR") and description in row for row in rows), (description, rows)


def test_spine_landmarks_are_drawn_at_their_scoord_points_with_their_labels(
        ohif: dict[str, Any], stack: dict[str, Any]) -> None:
    seen = ohif["opens"]["spine-sr"]
    assert seen["listed"]
    assert landmark_problems(seen, stack["studies"]["spine"]) == []
    # Only our landmarks are drawn, each once, and OHIF shows its read-only SR viewport.
    uids = [a["uid"] for a in seen["annotations"]["items"]]
    assert sorted(uids) == sorted(uid for uid, _ in _landmarks(stack["studies"]["spine"]))
    assert "SR" in seen["badge"]
    assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]
    # The group's Certainty of Finding is part of the label (OHIF prints each NUM).
    texts = {a["uid"]: a["text"] for a in seen["annotations"]["items"]}
    for uid, finding in _landmarks(stack["studies"]["spine"]):
        if finding.confidence is None and len(finding.evaluations) == 1 and finding.evaluations[0].confidence:
            assert f"Certainty of Finding: {finding.evaluations[0].confidence * 100:.2f} %" in texts[uid]


def test_an_sr_with_a_wrong_root_concept_shows_no_landmarks(ohif: dict[str, Any],
                                                           stack: dict[str, Any]) -> None:
    """The check above fails when the SR stops displaying: here for a title OHIF does not
    know, which makes OHIF fall back to its plain-text SR view."""
    seen = ohif["opens"]["wrong-root-sr"]
    assert seen["listed"]
    problems = landmark_problems(seen, stack["studies"]["wrong-root"])
    assert len(problems) == len(_landmarks(stack["studies"]["wrong-root"]))
    assert all(p.endswith("not drawn") for p in problems), problems
    assert "Diagnostic imaging report" in seen["viewportText"]


@pytest.mark.parametrize("name, red", [("spine-sc", 200), ("quality-sc", 40), ("mtici-sc", 80),
                                       ("keyframes-sc", 120)])
def test_secondary_captures_display_their_pixels(ohif: dict[str, Any], name: str, red: int) -> None:
    """The rendered SC shows what the module drew: a field of red ``red`` with a yellow
    block covering a quarter of its width and height (tests/results/scenarios.picture)."""
    seen = ohif["opens"][name]
    assert seen["listed"] and seen["canvas"], seen["errors"]
    pixels = np.asarray(Image.open(ARTIFACTS / seen["canvas"]["file"]).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    yellow = (r > 230) & (g > 230) & (b < 40)
    field = (abs(r - red) <= 12) & (g < 15) & (b < 15)
    shown = yellow | field  # the image, as opposed to the black viewport around it
    assert shown.sum() > 0.2 * shown.size, f"{name}: the SC is not on screen"
    # The block is 1/16 of the picture; OHIF's smoothing blurs only its edges.
    assert 0.04 < yellow.sum() / shown.sum() < 0.08, yellow.sum() / shown.sum()


@pytest.mark.xfail(strict=True, reason=(
    "OHIF 3.13.2 draws only measurement groups with a SCOORD and throws "
    "(TypeError reading 'ReferencedSOPSequence' in _checkIfCanAddMeasurementsToDisplaySet) on "
    "a TID 1501 group without one, so its SR viewport stays black; CODE evaluations and the "
    "Tracking Identifier are never printed. Needs the results-layer change in "
    "deploy/viewer/README.md (§ What OHIF shows)."))
@pytest.mark.parametrize("name, module", [("quality-sr", "quality"), ("mtici-sr", "mtici"),
                                          ("keyframes-sr", "keyframes")])
def test_image_level_findings_are_readable_in_the_sr_viewport(
        ohif: dict[str, Any], stack: dict[str, Any], name: str, module: str) -> None:
    seen = ohif["opens"][name]
    assert seen["listed"]
    assert not [e for e in seen["errors"] if "Error Boundary" in e], seen["errors"]
    study = stack["studies"]["keyframes" if module == "keyframes" else "dsa"]
    scenario = next(s for s in study.scenarios if s.findings.module == module)
    shown = seen["viewportText"] + " ".join(a["text"] for a in (seen["annotations"] or {"items": []})["items"])
    for finding in scenario.findings.findings:
        assert finding.tracking_id in shown, finding.tracking_id


def test_no_request_leaves_127_0_0_1(ohif: dict[str, Any]) -> None:
    requests = ohif["seen"]["requests"]
    assert len(requests) > 50  # the app, its chunks, QIDO, WADO-RS metadata and frames
    hosts = {urllib.parse.urlsplit(r["url"]).hostname for r in requests
             if urllib.parse.urlsplit(r["url"]).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, hosts
    # Nothing but http(s) on that origin and in-page data/blob URLs.
    schemes = {urllib.parse.urlsplit(r["url"]).scheme for r in requests}
    assert schemes <= {"http", "data", "blob"}, schemes


def test_screenshots_are_written(ohif: dict[str, Any]) -> None:
    for seen in ohif["opens"].values():
        path = Path(ARTIFACTS / seen["screenshot"])
        assert path.exists() and Image.open(path).size == (1400, 850), path
