"""The shipped rules on real headers: files pushed with storescu, judged by ``route explain``.

One receiver process (``dicomnode run --role receiver``: nothing is routed or run)
stores every case; ``dicomnode route explain --json`` then evaluates the default
rules on what the index holds, with the same code the router uses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, storescu, wait_for_port
from dicom_factory import make_dataset, uid, write
from pydicom.uid import CTImageStorage, MRImageStorage, XRayAngiographicImageStorage

SUB = ["DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"]


def _xa(path: Path, study: str, *, angle: float, image_type: list[str], frames: int = 8,
        body: str = "HEAD", description: str = "DSA") -> Path:
    ds = make_dataset(XRayAngiographicImageStorage, study_uid=study, modality="XA", frames=frames,
                      rows=32, columns=32, bits=8, SeriesDescription=description)
    ds.ImageType = image_type
    ds.BodyPartExamined = body
    ds.PositionerPrimaryAngle = angle
    ds.PositionerSecondaryAngle = 0.0
    if frames > 1:
        ds.FrameTime = 66.7
        ds.FrameIncrementPointer = 0x00181063
    return write(ds, path)


def _mr(path: Path, study: str, *, iop: list[int], description: str,
        body: str = "LSPINE") -> Path:
    ds = make_dataset(MRImageStorage, study_uid=study, rows=32, columns=32,
                      SeriesDescription=description, BodyPartExamined=body,
                      StudyDescription="MR LUMBAR SPINE")
    ds.ImageOrientationPatient = iop
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [0.5, 0.5]
    return write(ds, path)


@dataclass(frozen=True)
class Case:
    """One series: the rule it must match (None: no rule) and the words a miss must give."""

    study: str
    description: str
    matched: str | None
    module: str | None
    misses: dict[str, str]


STUDIES = {k: uid() for k in ("neuro", "neuro-ap-only", "coronary", "spine", "ct")}

CASES = [
    Case("neuro", "DSA AP", "dsa-head-quality", "quality",
         {"coronary-cine-keyframes": "image_type contains none of SUBTRACTION"}),
    Case("neuro", "DSA LAT", "dsa-head-quality", "quality",
         {"lumbar-spine-sagittal": "modality = 'MR' (was 'XA')"}),
    Case("neuro", "DSA single frame", None, None,
         {"dsa-head-quality": "number_of_frames >= 2 (was 1)"}),
    Case("neuro-ap-only", "DSA AP", "dsa-head-quality", "quality", {}),
    Case("coronary", "LCA RAO 30", "coronary-cine-keyframes", "keyframes",
         {"dsa-head-quality": "image_type contains any of SUBTRACTION, SUBTRACTED, DSA "
                              "(was ORIGINAL\\PRIMARY)"}),
    Case("spine", "T2 SAG", "lumbar-spine-sagittal", "spine",
         {"dsa-head-quality": "modality = 'XA' (was 'MR')"}),
    Case("spine", "T2 AX", None, None,
         {"lumbar-spine-sagittal": "none of: orientation = 'SAGITTAL' (was 'AXIAL')"}),
    Case("ct", "CT head", None, None,
         {"dsa-head-quality": "modality = 'XA' (was 'CT')",
          "lumbar-spine-sagittal": "modality = 'MR' (was 'CT')"}),
]


def _write_cases(out: Path) -> list[Path]:
    s = STUDIES
    return [
        _xa(out / "n1.dcm", s["neuro"], angle=2.0, image_type=SUB, description="DSA AP"),
        _xa(out / "n2.dcm", s["neuro"], angle=-91.0, image_type=SUB, description="DSA LAT"),
        _xa(out / "n3.dcm", s["neuro"], angle=0.0, image_type=SUB, frames=1,
            description="DSA single frame"),
        _xa(out / "a1.dcm", s["neuro-ap-only"], angle=0.0, image_type=SUB, description="DSA AP"),
        _xa(out / "c1.dcm", s["coronary"], angle=-30.0, image_type=["ORIGINAL", "PRIMARY"],
            frames=12, body="HEART", description="LCA RAO 30"),
        _mr(out / "s1.dcm", s["spine"], iop=[0, 1, 0, 0, 0, -1], description="T2 SAG"),
        _mr(out / "s2.dcm", s["spine"], iop=[1, 0, 0, 0, 1, 0], description="T2 AX"),
        write(make_dataset(CTImageStorage, study_uid=s["ct"], modality="CT", rows=32, columns=32,
                           SeriesDescription="CT head", BodyPartExamined="HEAD"),
              out / "ct.dcm"),
    ]


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every case stored by a receiver; ``route explain --json`` of each study."""
    root = tmp_path_factory.mktemp("matching")
    files = _write_cases(root / "in")
    port = free_port()
    (root / "node.toml").write_text("[node]\nfsync = false\n")
    base = ["--config", str(root / "node.toml"), "--data-dir", str(root / "data")]
    with open(root / "node.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli.main", "run", "--role", "receiver", *base,
             "--port", str(port), "--bind", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, proc)
        sent = storescu(port, *files)
        assert sent.returncode == 0, sent.stderr
        # Explanations in-process (the function the CLI prints), and the CLI itself for
        # one study in JSON (it must print the same) and one as a table.
        from dicomnode.config import Settings
        from dicomnode.jobs.modules import load_routing
        from dicomnode.routing.explain import explain_study
        from dicomnode.storage.db import open_database

        db = open_database(f"sqlite:///{root / 'data' / 'index.sqlite'}", upgrade=False)
        rules = load_routing(Settings())  # what the CLI loads: defaults, installed modules
        out: dict[str, Any] = {}
        for key, study in STUDIES.items():
            explanation = explain_study(db, study, rules)
            assert explanation is not None
            out[key] = json.loads(json.dumps(explanation.as_json(), default=str))
        db.dispose()
        res = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "route", "explain",
                              STUDIES["neuro"], "--json", *base], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        out["neuro-cli"] = json.loads(res.stdout)
        table = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "route", "explain",
                                STUDIES["spine"], *base], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "COLUMNS": "400"})
        out["spine-table"] = table.stdout
        yield out
    finally:
        proc.terminate()
        proc.wait(30)


def _series(explanation: dict[str, Any], description: str) -> str:
    return next(s["series_instance_uid"] for s in explanation["series"]
                if s["series_description"] == description)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.study}-{c.description}" for c in CASES])
def test_each_series_routes_to_the_right_module_or_none_and_explain_says_why(
    explained: dict[str, Any], case: Case
) -> None:
    explanation = explained[case.study]
    series = _series(explanation, case.description)
    mine = {o["rule"]: o for o in explanation["outcomes"] if o["series_instance_uid"] == series}
    assert set(mine) == {"dsa-head-quality", "coronary-cine-keyframes", "lumbar-spine-sagittal"}
    matched = [rule for rule, o in mine.items() if o["matched"]]
    assert matched == ([case.matched] if case.matched else []), mine
    if case.matched:
        o = mine[case.matched]
        assert case.module in o["modules"] + o["missing_modules"] and o["failed"] == []
    for rule, words in case.misses.items():
        assert any(words in f for f in mine[rule]["failed"]), (rule, mine[rule]["failed"])


def test_mtici_needs_a_frontal_and_a_lateral_dsa_run_of_the_study(explained: dict[str, Any]) -> None:
    both = next(o for o in explained["neuro"]["outcomes"] if o["rule"] == "dsa-head-mtici")
    assert both["matched"] and both["failed"] == []
    assert sorted(both["series"]) == sorted(
        _series(explained["neuro"], d) for d in ("DSA AP", "DSA LAT"))
    assert "mtici" in both["modules"] + both["missing_modules"]
    ap_only = next(o for o in explained["neuro-ap-only"]["outcomes"] if o["rule"] == "dsa-head-mtici")
    assert not ap_only["matched"]
    assert ap_only["failed"] == [
        "requires lateral DSA run: none of 1 series matched by dsa-head-quality qualifies "
        "(#1 XA 'DSA AP': view = 'LATERAL' (was 'FRONTAL'))"]
    for key in ("coronary", "spine", "ct"):
        other = next(o for o in explained[key]["outcomes"] if o["rule"] == "dsa-head-mtici")
        assert other["failed"][0].startswith("requires frontal DSA run: no series matched by")


def test_the_cli_prints_the_same_explanation_as_json(explained: dict[str, Any]) -> None:
    assert explained["neuro-cli"] == explained["neuro"]


def test_explain_prints_a_table_for_people(explained: dict[str, Any]) -> None:
    table = explained["spine-table"]
    assert "lumbar-spine-sagittal" in table and "match → spine" in table
    assert "orientation = 'SAGITTAL' (was 'AXIAL')" in table
