"""Storage Commitment replies reach the running node: Orthanc's N-EVENT-REPORT on its own association.

tests/results checks the outbox's side (N-ACTION sent, ``record_commitment`` with a
test-local SCP).  Here the whole loop runs in ``dicomnode run``: its scheduler delivers
results to a real Orthanc with ``storage_commitment`` on, Orthanc answers on a new
association to the node's receiver, and the receiver records the commitment.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NodeProcess, OrthancServer
from results.conftest import make_settings
from results.scenarios import keyframes
from sqlalchemy import select

from dicomnode.results import build_results, store_results
from dicomnode.storage.db import open_database
from dicomnode.storage.models import Delivery, Event


@pytest.mark.slow
def test_orthancs_commitment_report_is_recorded_by_the_running_node(
        node_factory: Callable[..., NodeProcess], orthanc_factory: Callable[..., OrthancServer]) -> None:
    node = node_factory(start=False)
    orthanc = orthanc_factory(modalities={"dicomnode": ["DICOMNODE", "127.0.0.1", node.port]})
    destination = {"name": "pacs", "aetitle": orthanc.aetitle, "host": "127.0.0.1",
                   "port": orthanc.dicom_port, "storage_commitment": True}
    node.config = {"jobs": {"workers": 0}, "destinations": [destination]}
    node.start()
    settings = make_settings(node={"aetitle": "DICOMNODE"}, destinations=[destination])
    db = open_database(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        scenario = keyframes()
        objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
        stored = store_results(db, node.data_dir / "spool", None, objects, ["pacs"])
        uids = {s.sop_instance_uid for s in stored}

        def rows() -> list[Delivery]:
            with db.session() as s:
                return list(s.scalars(select(Delivery)))

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(r.committed_at for r in rows()):
            time.sleep(0.5)
        assert all(r.state == "delivered" for r in rows()), [(r.state, r.last_error) for r in rows()]
        assert all(r.committed_at is not None for r in rows()), node.log()[-3000:]
        assert orthanc.sop_instance_uids() >= uids
        # The receiver (not a test handler) took the report: its log line names Orthanc.
        assert "storage commitment report from ORTHANC: 3 committed, 0 failed" in node.log()
        with db.session() as s:
            refused = s.scalars(select(Event.kind).where(Event.kind == "store-refused")).all()
        assert refused == []
    finally:
        db.dispose()


def test_a_commitment_report_from_an_unknown_ae_changes_nothing(node: NodeProcess, tmp_path: Path) -> None:
    """An N-EVENT-REPORT is answered (success: the report was read) but confirms nothing
    when its AE is not a configured destination."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE", ext_neg=[role])
    assert assoc.is_established
    report = Dataset()
    report.TransactionUID = "1.2.3.4"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5"
    report.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    assoc.release()
    assert status is not None and status.Status == 0x0000
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "unknown AE" not in node.log():
        time.sleep(0.2)
    assert "storage commitment report from unknown AE 'STRANGER' ignored" in node.log()
