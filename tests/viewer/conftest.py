"""The viewer stack for the browser test, built once per module.

Orthanc (Debian's, with its DICOMweb plugin) stands for the PACS.  The source images
go in with dcmtk's ``storescu`` as a modality would send them; the node's results go
in through its own outbox (:func:`~dicomnode.results.store_results` then
:func:`~dicomnode.results.deliver_due`).  ``deploy/viewer/serve.py`` serves the OHIF
build (``@ohif/app`` from npm, installed by ``deploy/viewer/install-test-deps.sh``)
and Orthanc's DICOMweb on one 127.0.0.1 origin, and ``eyes.js`` looks at it in
Debian's Chromium through playwright-core.  Screenshots land in
``tests/artifacts/viewer/``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import OrthancServer, free_port, storescu, wait_for_port
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from results.conftest import make_settings
from results.factories import StudyHeader
from results.scenarios import Scenario, keyframes, mtici, quality, spine
from viewer import node_run

from dicomnode.results import build_results, deliver_due, store_results
from dicomnode.results.build import BuildOptions, ResultObject
from dicomnode.results.sr import is_summary
from dicomnode.storage.db import open_database

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "viewer"
SERVE = REPO / "deploy" / "viewer" / "serve.py"
APP_CONFIG = REPO / "deploy" / "viewer" / "app-config.js"
OHIF_DIST = Path(os.environ.get("DICOMNODE_OHIF_DIST", HERE / "ohif" / "dist"))
PLAYWRIGHT = HERE / "node_modules" / "playwright-core"
CHROMIUM = Path("/usr/bin/chromium")
SITE_ORTHANC = json.loads((REPO / "deploy" / "viewer" / "orthanc.json").read_text())
DICOMWEB_PLUGIN = Path(SITE_ORTHANC["Plugins"][0])
INSTALL = "bash deploy/viewer/install-test-deps.sh"

#: How the scenario studies' results are built: with the summary SR (results.summary_sr).
VIEWER_OPTIONS = BuildOptions(summary_sr=True)

#: A title OHIF does not know: its SR viewport then shows the tree as text, draws nothing.
WRONG_ROOT = ("18748-4", "LN", "Diagnostic imaging report")


@dataclass
class Study:
    """One study in Orthanc: the scenario(s) behind it and the result objects delivered."""

    name: str
    scenarios: list[Scenario]
    objects: list[ResultObject] = field(default_factory=list)

    @property
    def study_instance_uid(self) -> str:
        return str(self.scenarios[0].sources[0].StudyInstanceUID)

    def of_kind(self, kind: str, module: str | None = None) -> list[ResultObject]:
        return [o for o in self.objects if o.kind == kind and module in (None, o.module)]


def _require_tools() -> None:
    missing = [str(p) for p in (OHIF_DIST / "index.html", PLAYWRIGHT / "package.json", CHROMIUM,
                                DICOMWEB_PLUGIN) if not p.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"viewer test tools missing ({', '.join(missing)}): run `{INSTALL}`")


def _with_root(sr: Dataset, code: tuple[str, str, str]) -> Dataset:
    """A copy of ``sr`` whose document title (root concept) is ``code``."""
    bad = Dataset()
    bad.update(sr)
    bad.file_meta = sr.file_meta
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    bad.ConceptNameCodeSequence = DicomSequence([item])
    return bad


def _studies() -> list[Study]:
    """Every module kind, each study with a patient of its own, plus a broken SR."""
    def header(name: str, description: str) -> StudyHeader:
        return StudyHeader(patient_name=f"{name}^Viewer", patient_id=f"VIEW-{name.upper()}",
                           study_description=description)

    dsa = header("Dsa", "Thrombectomy")
    studies = [
        Study("spine", [spine(header("Spine", "MRI lumbar spine"))]),
        Study("dsa", [quality(dsa), mtici(dsa)]),
        Study("keyframes", [keyframes(header("Cath", "Coronary angiography"))]),
        Study("wrong-root", [spine(header("Wrongroot", "MRI lumbar spine"))]),
    ]
    return studies


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Orthanc with DICOMweb holding every study, and serve.py in front of it."""
    _require_tools()
    work = tmp_path_factory.mktemp("viewer")
    orthanc = OrthancServer(
        aetitle="PACS", dicom_port=free_port(), http_port=free_port(), workdir=work / "orthanc",
        # The DICOMweb settings a site gets from deploy/viewer/orthanc.json; ports,
        # storage and AE title are the test's own.
        extra_config={key: SITE_ORTHANC[key] for key in ("Plugins", "DicomWeb")},
    )
    server: subprocess.Popen[bytes] | None = None
    node: node_run.NodeSpine | None = None
    starting: Future[node_run.NodeSpine] | None = None
    started = time.monotonic()
    timing: dict[str, float] = {}

    def lap(what: str) -> None:
        timing[what] = round(time.monotonic() - started, 1)

    orthanc.start()
    lap("orthanc up")
    try:
        # The node's preparation (synthetic study, model version, start-up) runs beside
        # the scenario studies: it is mostly waiting on subprocesses.
        pool = ThreadPoolExecutor(1)
        starting = pool.submit(node_run.start, work / "node-run", orthanc)
        settings = make_settings(
            node={"aetitle": "DICOMNODE"},
            destinations=[{"name": "pacs", "aetitle": "PACS", "host": "127.0.0.1",
                           "port": orthanc.dicom_port}],
        )
        db = open_database(f"sqlite:///{work / 'index.sqlite'}")
        studies = _studies()
        for study in studies:
            for scenario in study.scenarios:
                paths = scenario.write_sources(work / "sources" / study.name / scenario.name)
                sent = storescu(orthanc.dicom_port, *paths, aetitle="PACS", calling="MODALITY")
                assert sent.returncode == 0, sent.stderr
                # With the summary SR: what makes image-level findings readable in OHIF.
                objects = build_results(scenario.findings, scenario.images, scenario.sources,
                                        settings, options=VIEWER_OPTIONS)
                if study.name == "wrong-root":
                    objects = [dataclasses.replace(o, dataset=_with_root(o.dataset, WRONG_ROOT))
                               for o in objects if o.kind == "SR"]
                store_results(db, work / "spool", None, objects, ["pacs"])
                study.objects.extend(objects)
        report = deliver_due(db, settings, work / "spool")
        db.dispose()
        delivered = sum(len(s.objects) for s in studies)
        assert (report.delivered, report.retrying, report.failed) == (delivered, 0, 0), report
        lap("scenario results delivered")
        node = starting.result(timeout=300)
        pool.shutdown()
        lap("node started")
        node_run.push(node, orthanc)
        lap("study pushed to the node")

        port = free_port()
        log = open(work / "serve.log", "wb")  # noqa: SIM115 - lives with the process
        server = subprocess.Popen(
            [sys.executable, str(SERVE), "--dist", str(OHIF_DIST), "--orthanc", orthanc.url,
             "--port", str(port), "--app-config", str(APP_CONFIG),
             "--access-log", str(work / "access.log")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(port, 30, server)
        node_run.wait_for_results(node, orthanc)
        lap("node results in the PACS")
        yield {"base": f"http://127.0.0.1:{port}", "orthanc": orthanc, "studies":
               {s.name: s for s in studies}, "node": node, "work": work, "timing": timing}
    finally:
        if node is None and starting is not None:
            node = starting.result() if starting.done() and not starting.exception() else None
        if node is not None:
            node.node.stop()
        if server is not None:
            server.terminate()
            server.wait(10)
        orthanc.stop()


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR tree, depth first in document order."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def tracking_uids(sr: Dataset) -> list[str]:
    """Tracking Unique Identifiers (112040) of an SR, in document order."""
    return [str(item.UID) for item in content_items(sr) if item.get("ValueType") == "UIDREF"
            and item.ConceptNameCodeSequence[0].CodeValue == "112040"]


@dataclass(frozen=True)
class SRPoint:
    """One TID 1410 POINT group of an SR, as written in the document."""

    uid: str
    tracking_id: str
    finding_site: str
    column: float
    row: float
    image: str  # SOP Instance UID the point was selected from
    displayed: bool  # on the image OHIF's SR viewport opens (the first group's)


def sr_points(sr: Dataset) -> list[SRPoint]:
    """The SCOORD POINT groups of ``sr`` in document order."""
    out: list[SRPoint] = []
    for group in content_items(sr):
        if group.get("ValueType") != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue
        by_code = {i.ConceptNameCodeSequence[0].CodeValue: i for i in group.ContentSequence}
        scoord = next((i for i in group.ContentSequence if i.ValueType == "SCOORD"), None)
        if scoord is None or scoord.GraphicType != "POINT":
            continue
        image = str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        site = by_code.get("363698007")
        out.append(SRPoint(
            uid=str(by_code["112040"].UID), tracking_id=str(by_code["112039"].TextValue),
            finding_site=str(site.ConceptCodeSequence[0].CodeMeaning) if site else "",
            column=float(scoord.GraphicData[0]), row=float(scoord.GraphicData[1]),
            image=image, displayed=not out or image == out[0].image))
    return out


def listed_name(ds: Dataset) -> str:
    """The patient as OHIF's study list writes the name: "Family, Given"."""
    return f"{ds.PatientName.family_name}, {ds.PatientName.given_name}"


def _sr_open(name: str, sr: ResultObject, timeout_ms: int) -> dict[str, Any]:
    plan = {"name": name, "modality": "SR", "series": str(sr.dataset.SeriesDescription),
            "waitForUids": tracking_uids(sr.dataset), "timeoutMs": timeout_ms}
    if is_summary(sr.dataset):
        # Text only: done when OHIF's text view shows the last finding.
        plan["untilText"] = [str(i.TextValue) for i in content_items(sr.dataset)
                             if i.get("ValueType") == "TEXT"][-1]
    return plan


def _sc_open(name: str, sc: ResultObject | Dataset) -> dict[str, Any]:
    ds = sc.dataset if isinstance(sc, ResultObject) else sc
    return {"name": name, "modality": "OT", "series": str(ds.SeriesDescription)}


def viewer_plan(studies: dict[str, Study], node: node_run.NodeSpine, base: str) -> dict[str, Any]:
    """What eyes.js opens: each visit is one page load of a study in OHIF's viewer.

    Each SR of an image-level module (its TID 1500 report and its summary) is opened
    on a page of its own, as a reader coming from the study list would: an error page
    of one (OHIF 3.13.2 failed on image-level groups without SCOORD) cannot hide the
    other.
    """
    s = studies
    spine_sr, = s["spine"].of_kind("SR")
    spine_sc, = s["spine"].of_kind("SC")
    node_sr, node_sc = node.results["SR"], node.results["OT"]
    visits = [
        {"name": "node-spine", "study": node.study_instance_uid,
         "opens": [{"name": "node-spine-sr", "modality": "SR",
                    "series": str(node_sr.SeriesDescription),
                    "waitForUids": [p.uid for p in sr_points(node_sr) if p.displayed],
                    "timeoutMs": 40000},
                   _sc_open("node-spine-sc", node_sc)]},
        {"name": "spine", "study": s["spine"].study_instance_uid,
         "opens": [_sr_open("spine-sr", spine_sr, 40000), _sc_open("spine-sc", spine_sc)]},
        {"name": "dsa", "study": s["dsa"].study_instance_uid,
         "opens": [_sc_open("quality-sc", s["dsa"].of_kind("SC", "quality")[0]),
                   _sc_open("mtici-sc", s["dsa"].of_kind("SC", "mtici")[0])]},
        {"name": "keyframes", "study": s["keyframes"].study_instance_uid,
         "opens": [_sc_open("keyframes-sc", s["keyframes"].of_kind("SC")[0])]},
        # Each SR of an image-level module on a page of its own (see the docstring).
        *({"name": f"{module}-sr-{i}", "study": study.study_instance_uid,
           "opens": [_sr_open(f"{module}-sr-{i}", sr, 15000)]}
          for study, module in ((s["dsa"], "quality"), (s["dsa"], "mtici"),
                                (s["keyframes"], "keyframes"))
          for i, sr in enumerate(study.of_kind("SR", module))),
        # The broken SR is watched at least as long as the good one needed (about 3 s).
        {"name": "wrong-root", "study": s["wrong-root"].study_instance_uid,
         "opens": [{**_sr_open("wrong-root-sr", s["wrong-root"].of_kind("SR")[0], 20000),
                    "minMs": 6000, "untilText": WRONG_ROOT[2]}]},
    ]
    first = s["spine"].scenarios[0].sources[0]
    return {"base": base, "out": str(ARTIFACTS), "viewport": [1400, 850], "chromium": str(CHROMIUM),
            "studyList": {"waitFor": listed_name(first)}, "visits": visits}


@pytest.fixture(scope="module")
def ohif(stack: dict[str, Any]) -> dict[str, Any]:
    """What eyes.js saw, by visit and open name (screenshots in tests/artifacts/viewer/)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    plan = viewer_plan(stack["studies"], stack["node"], stack["base"])
    plan_path = stack["work"] / "plan.json"
    out_path = stack["work"] / "observations.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    env = {**os.environ, "NODE_PATH": str(HERE / "node_modules")}
    run = subprocess.run(["node", str(HERE / "eyes.js"), str(plan_path), str(out_path)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=HERE)
    (ARTIFACTS / "eyes.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0 and out_path.exists(), f"eyes.js failed:\n{run.stderr[-3000:]}"
    seen = json.loads(out_path.read_text())
    shutil.copy(out_path, ARTIFACTS / "observations.json")
    (ARTIFACTS / "timing.json").write_text(json.dumps(
        {"setup_seconds": stack["timing"], "browser_seconds": seen["elapsed"]}, indent=1))
    assert "fatal" not in seen, f"eyes.js stopped: {seen['fatal']} (see {ARTIFACTS}/failure.png)"
    opens = {o["name"]: o for v in seen["visits"] for o in v["opens"]}
    return {"seen": seen, "opens": opens, "visits": {v["name"]: v for v in seen["visits"]},
            "plan": plan}
