"""A spine study produced by the node itself: ``dicomnode synth`` → ``dicomnode run`` → Orthanc.

The synthetic lumbar MR goes to a running node (dcmtk ``storescu``, as a modality
sends it) and to the PACS; the shipped routing rules send it to the real spine
module, whose results the node's scheduler delivers to the PACS.  Without a bundled
spine model the node runs a freshly initialised one (as tests/jobs does): its points
are arbitrary, which is all a display check needs, because what OHIF must draw is
read back from the SR the PACS received.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from conftest import NodeProcess, OrthancServer, free_port, storescu
from pydicom.dataset import Dataset


@dataclass
class NodeSpine:
    """The node run and, once delivered, its results as the PACS holds them."""

    node: NodeProcess
    files: list[Path]
    study_instance_uid: str = ""
    results: dict[str, Dataset] = field(default_factory=dict)  # Modality -> dataset
    sources: dict[str, Dataset] = field(default_factory=dict)  # SOP Instance UID -> header


def _untrained_spine(out: Path) -> Path | None:
    """A model version for the node to import when the spine module ships none."""
    from ai.core.models import save_model_version
    from ai.core.registry import get_module

    module = get_module("spine")
    if (module.bundled_model_path() / "metadata.json").is_file():
        return None
    config = module.default_config()
    return save_model_version(out, "spine", module.network(config), config,
                              version="untrained-viewer-test", command="tests/viewer/node_run.py")


def start(work: Path, orthanc: OrthancServer) -> NodeSpine:
    """Write a synthetic spine study and start a node that delivers to ``orthanc``."""
    made = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "synth", "spine",
                           "--out", str(work / "synth"), "--n", "1", "--seed", "7"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    files = sorted((work / "synth").rglob("*.dcm"))
    assert files, made.stdout
    node = NodeProcess(data_dir=work / "node", port=free_port(), config={
        "node": {"fsync": False},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "sweep_seconds": 0.5},
        "jobs": {"workers": 1, "max_attempts": 1, "torch_threads": 1},
        "destinations": [{"name": "pacs", "aetitle": orthanc.aetitle, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
    })
    node.data_dir.mkdir(parents=True)
    node.write_config()
    version = _untrained_spine(work / "models" / "spine")
    if version is not None:
        node.cli("models", "import", str(version), "--activate")
    node.start(wait=False)
    return NodeSpine(node, files)


def push(run: NodeSpine, orthanc: OrthancServer) -> None:
    """Send the study to the node and to the PACS, as a modality with two destinations."""
    run.node.wait_listening()
    for port, aetitle in ((run.node.port, run.node.aetitle), (orthanc.dicom_port, orthanc.aetitle)):
        sent = storescu(port, *run.files, aetitle=aetitle, calling="MODALITY")
        assert sent.returncode == 0, sent.stderr
    first = pydicom.dcmread(run.files[0], stop_before_pixels=True)
    run.study_instance_uid = str(first.StudyInstanceUID)


def wait_for_results(run: NodeSpine, orthanc: OrthancServer, timeout: float = 240) -> None:
    """Wait until the PACS holds the node's SR and SC for the study; read them back."""
    deadline = time.monotonic() + timeout
    study = None
    while time.monotonic() < deadline:
        found = orthanc.post("/tools/find", {"Level": "Study", "Query": {
            "StudyInstanceUID": run.study_instance_uid}})
        if found:
            study = found[0]
            modalities = {orthanc.get(f"/series/{s}")["MainDicomTags"].get("Modality")
                          for s in orthanc.get(f"/studies/{study}")["Series"]}
            if {"SR", "OT"} <= modalities:
                break
        if run.node.proc is not None and run.node.proc.poll() is not None:
            raise AssertionError(f"the node exited:\n{run.node.log()[-3000:]}")
        time.sleep(0.5)
    else:
        raise AssertionError(f"no SR and SC from the node in {timeout} s:\n{run.node.log()[-3000:]}")
    for instance in orthanc.get(f"/studies/{study}/instances"):
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.file(instance["ID"])))
        if ds.Modality in ("SR", "OT"):
            run.results[str(ds.Modality)] = ds
        else:
            run.sources[str(ds.SOPInstanceUID)] = ds
