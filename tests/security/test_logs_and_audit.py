"""No patient name or ID in the node's log unless ``node.log_phi`` is on; an audit trail of
who sent what, and of every refusal with its reason.

The node receives and refuses data sets carrying a distinctive patient (stored,
duplicate, conflicting, hostile UID, wrong SOP class, truncated, a PatientID whose
VR was changed so the parser's own error message quotes it).  Then its whole
log — pydicom's and pynetdicom's lines included — must not name the patient.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess, storescu
from dicom_factory import make_dataset, uid, write
from fuzz.corpus import find
from fuzz.harness import Sender, encode, events, file_with, lenient_writing, start_node, wait_for
from pydicom.uid import CTImageStorage

NAME, PATIENT_ID = "Zyxwvut^Qorbleplatz", "PIDX-7734219"
#: Any fragment of the name or ID, as a log line might spell it.
PHI = re.compile(r"zyxwvut|qorbleplatz|pidx|7734219", re.IGNORECASE)


def patient_dataset(**kw: object):  # type: ignore[no-untyped-def]
    return make_dataset(rows=8, columns=8, PatientName=NAME, PatientID=PATIENT_ID, **kw)


def send_everything(node: NodeProcess, work: Path) -> dict[str, int | None]:
    """Stored, duplicate, conflicting and broken instances of the distinctive patient."""
    study = uid()
    good = [write(patient_dataset(study_uid=study, instance_number=i, seed=i), work / f"good{i}.dcm")
            for i in range(3)]
    assert storescu(node.port, *good, calling="MODALITY1").returncode == 0
    sender = Sender(node.port, calling="MODALITY2")
    answers: dict[str, int | None] = {"duplicate": sender.store(good[0])}
    conflict = patient_dataset(sop_uid=str(make_sop(good[0])), study_uid=study, seed=99)
    answers["conflict"] = sender.store(write(conflict, work / "conflict.dcm"))
    hostile = patient_dataset()
    with lenient_writing():
        hostile.SeriesInstanceUID = "../../" + PATIENT_ID
        answers["hostile uid"] = sender.store(write(hostile, work / "hostile.dcm"))
    ct = patient_dataset(sop_class=CTImageStorage, modality="CT")
    data = encode(ct)
    mismatch = patient_dataset()
    mismatch.SOPInstanceUID = mismatch.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    answers["wrong SOP class"] = sender.store(file_with(mismatch, data, work / "mismatch.dcm"))
    ds = patient_dataset()
    data = encode(ds)
    answers["truncated"] = sender.store(file_with(ds, data[: len(data) // 2], work / "cut.dcm"))
    pid = find(data, 0x00100020)
    # 12 bytes cannot be FD values (8 bytes each): pydicom's error quotes the bytes.
    answers["PatientID as FD"] = sender.store(
        file_with(ds, data[:pid.start + 4] + b"FD" + data[pid.start + 6:], work / "vr.dcm"))
    sender.close()
    return answers


def make_sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def phi_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, dict[str, int | None]]]:
    node = start_node(tmp_path_factory.mktemp("phi-node"),
                      config={"node": {"duplicate_policy": "reject"}})
    answers = send_everything(node, tmp_path_factory.mktemp("phi-data"))
    wait_for(lambda: len(events(node, "received")) >= 1)
    yield node, answers
    node.stop()


def test_the_distinctive_patient_was_stored_and_refused(phi_run: tuple[NodeProcess, dict]) -> None:
    _, answers = phi_run
    assert answers == {"duplicate": 0x0000, "conflict": 0xA900, "hostile uid": 0xC000,
                       "wrong SOP class": 0xA900, "truncated": 0xC000, "PatientID as FD": 0xC000}


def test_no_log_line_names_the_patient(phi_run: tuple[NodeProcess, dict]) -> None:
    node, _ = phi_run
    log = node.log()
    assert log.count("refused") >= 5  # the refusals were logged ...
    leaks = [line for line in log.splitlines() if PHI.search(line)]
    assert leaks == []  # ... without the patient's name or ID


def test_the_audit_trail_records_who_sent_what_and_every_refusal(phi_run: tuple[NodeProcess, dict]) -> None:
    node, _ = phi_run
    received = wait_for(lambda: [e for e in events(node, "received") if e["calling_ae"] == "MODALITY1"])
    assert len(received) == 1 and received[0]["detail"]["instances"] == 3
    assert received[0]["peer"] == "127.0.0.1" and received[0]["study_instance_uid"]
    refused = wait_for(lambda: e if len(e := events(node, "store-refused")) >= 5 else None)
    assert {(e["calling_ae"], e["detail"]["status"]) for e in refused} == {
        ("MODALITY2", 0xA900), ("MODALITY2", 0xC000)}
    assert all(e["detail"]["reason"] and e["sop_instance_uid"] for e in refused)
    # The audit rows are no back door for the patient's identity either.
    assert not any(PHI.search(str(e)) for e in events(node))


def test_log_phi_on_names_the_patient_of_a_refused_instance(node_factory, tmp_path: Path) -> None:
    node = node_factory(config={"node": {"log_phi": True, "duplicate_policy": "reject"}})
    sop = uid()
    sender = Sender(node.port)
    assert sender.store(write(patient_dataset(sop_uid=sop, seed=1), tmp_path / "a.dcm")) == 0
    assert sender.store(write(patient_dataset(sop_uid=sop, seed=2), tmp_path / "b.dcm")) == 0xA900
    sender.close()
    [line] = [line for line in node.log().splitlines() if "refused" in line]
    assert NAME in line and PATIENT_ID in line
    assert wait_for(lambda: any(NAME in line for line in node.log().splitlines() if "closed:" in line))
