"""The outbox against real peers: Orthanc (Debian package) and a pynetdicom SCP on localhost.

- results reach Orthanc in the source study and read back the same;
- Orthanc down while results are stored, two node "restarts" (new Database objects
  on the same SQLite file), Orthanc up: everything arrives once, in order, and the
  retry times in the rows and the log follow ``delivery.retry_backoff_seconds``;
- storage warnings count as delivered, refusals retry alone, attempts run out;
- ``pending_summary`` / ``pending_deliveries`` say what waits and why;
- Storage Commitment with Orthanc confirms delivery (N-EVENT-REPORT to our SCP).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from conftest import OrthancServer, free_port
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]
from results.conftest import make_settings
from results.scenarios import Scenario, keyframes, spine
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.net.scu import Link, commitment_report_handler, send_files
from dicomnode.results import (
    build_results,
    deliver_due,
    pending_deliveries,
    pending_summary,
    record_commitment,
    store_results,
)
from dicomnode.results.srread import canonical, read_findings
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.models import Delivery, Result

T0 = dt.datetime(2026, 1, 14, 12, 0, 0)


def _settings(port: int, aetitle: str = "ORTHANC", **delivery: object) -> Settings:
    return make_settings(
        node={"aetitle": "DICOMNODE", "acse_timeout": 5, "dimse_timeout": 20, "network_timeout": 20},
        destinations=[{"name": "pacs", "aetitle": aetitle, "host": "127.0.0.1", "port": port}],
        delivery={"retry_backoff_seconds": [1.0, 2.0, 4.0], **delivery},
    )


def _store(db: Database, spool: Path, scenarios: list[Scenario], settings: Settings,
           now: dt.datetime = T0) -> list[str]:
    """Build and store each scenario's results; their SOP Instance UIDs in creation order."""
    uids = []
    for scenario in scenarios:
        objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
        stored = store_results(db, spool, None, objects, ["pacs"], now=now)
        uids.extend(s.sop_instance_uid for s in stored)
    return uids


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield database
    database.dispose()


def _rows(db: Database) -> list[Delivery]:
    with db.session() as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def _orthanc_order(orthanc: OrthancServer) -> list[str]:
    """SOP Instance UIDs in the order Orthanc stored them (its change log)."""
    changes = orthanc.get("/changes?since=0&limit=1000")["Changes"]
    ids = [c["ID"] for c in changes if c["ChangeType"] == "NewInstance"]
    return [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in ids]


@pytest.mark.slow
def test_orthanc_receives_sr_sc_and_kos_in_the_source_study(orthanc: OrthancServer, db: Database,
                                                            tmp_path: Path) -> None:
    settings = _settings(orthanc.dicom_port)
    scenario = keyframes()
    scenario.write_sources(tmp_path / "sources")
    # The PACS holds the study already, as it would when the modality sent it there too.
    pacs = settings.destinations[0]
    assert all(o.delivered for o in send_files(pacs, scenario.paths, Link("MODALITY")))
    objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    store_results(db, tmp_path / "spool", None, objects, ["pacs"])

    report = deliver_due(db, settings, tmp_path / "spool")

    assert (report.delivered, report.retrying, report.failed) == (3, 0, 0)
    assert all((r.state, r.last_status, r.attempts) == ("delivered", 0, 1) for r in _rows(db))
    by_uid = {i["MainDicomTags"]["SOPInstanceUID"]: i for i in orthanc.instances()}
    source_study = orthanc.get(f"/series/{by_uid[scenario.sources[0].SOPInstanceUID]['ParentSeries']}")[
        "ParentStudy"]
    for obj in objects:
        instance = by_uid[obj.sop_instance_uid]
        assert orthanc.get(f"/series/{instance['ParentSeries']}")["ParentStudy"] == source_study
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.file(instance["ID"])))
        assert (ds.SOPClassUID, ds.StudyInstanceUID, ds.Modality) == (
            obj.sop_class_uid, scenario.sources[0].StudyInstanceUID, obj.dataset.Modality)
        if obj.kind == "SR":
            assert read_findings(ds) == [
                canonical(f) for f in scenario.findings.findings]
        if obj.kind == "KO":
            image = next(i for i in ds.ContentSequence if i.ValueType == "IMAGE")
            assert [int(f) for f in image.ReferencedSOPSequence[0].ReferencedFrameNumber] == [7, 18, 33]
    assert len(by_uid) == len(scenario.sources) + len(objects)


@pytest.mark.slow
def test_pacs_outage_across_two_restarts_delivers_everything_once_in_order(
        orthanc_factory: Callable[..., OrthancServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.results.outbox")
    orthanc = orthanc_factory(start=False)  # the PACS is down when the job finishes
    settings = _settings(orthanc.dicom_port)
    url, spool = f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "spool"
    second = dt.timedelta(seconds=1)

    db = open_database(url)
    order = _store(db, spool, [keyframes(), spine()], settings)
    n = len(order)
    assert n == 5  # keyframes: SC, SR, KO; spine: SC, SR
    assert deliver_due(db, settings, spool, now=T0).retrying == n
    assert deliver_due(db, settings, spool, now=T0 + 0.5 * second).retrying == 0  # not due yet
    db.dispose()

    db = open_database(url)  # restart 1: all state is in the index
    assert {(r.attempts, r.next_attempt_at) for r in _rows(db)} == {(1, T0 + 1 * second)}
    assert deliver_due(db, settings, spool, now=T0 + 1 * second).retrying == n
    assert deliver_due(db, settings, spool, now=T0 + 3 * second).retrying == n
    assert {(r.attempts, r.next_attempt_at) for r in _rows(db)} == {(3, T0 + 7 * second)}
    db.dispose()

    db = open_database(url)  # restart 2
    assert deliver_due(db, settings, spool, now=T0 + 7 * second).retrying == n
    # Backoff 1, 2, 4, then capped at the last value: 4.
    assert {(r.attempts, r.next_attempt_at) for r in _rows(db)} == {(4, T0 + 11 * second)}
    assert all("no association" in r.last_error for r in _rows(db))
    summary = pending_summary(db)
    assert [(s.destination, s.pending, s.next_attempt_at) for s in summary] == [
        ("pacs", n, T0 + 11 * second)]
    assert summary[0].last_error

    orthanc.start()  # the PACS is back
    assert deliver_due(db, settings, spool, now=T0 + 10 * second).delivered == 0
    report = deliver_due(db, settings, spool, now=T0 + 11 * second)
    assert (report.delivered, report.retrying) == (n, 0)
    assert deliver_due(db, settings, spool, now=T0 + 60 * second).delivered == 0
    db.dispose()

    assert _orthanc_order(orthanc) == order  # once each, in creation order
    logged = [re.search(r"\(attempt (\d)\).*next attempt at (\S+) \(in (\S+) s\)", r.getMessage())
              for r in caplog.records]
    schedule = sorted({(int(m[1]), m[2], float(m[3])) for m in logged if m})
    assert schedule == [
        (1, (T0 + 1 * second).isoformat(), 1.0),
        (2, (T0 + 3 * second).isoformat(), 2.0),
        (3, (T0 + 7 * second).isoformat(), 4.0),
        (4, (T0 + 11 * second).isoformat(), 4.0),
    ]


@contextmanager
def storage_scp(statuses: dict[str, int], port: int, received: list[str],
                handlers: list | None = None) -> Iterator[None]:
    """A pynetdicom Storage SCP answering ``statuses[SOP Class]`` (default 0x0000)."""

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return statuses.get(str(event.request.AffectedSOPClassUID), 0x0000)

    ae = AE(ae_title="TESTSCP")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax,
                                 ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context(Verification)
    ae.add_supported_context(StorageCommitmentPushModel)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, handle_store), *(handlers or [])])
    try:
        yield
    finally:
        server.shutdown()


def test_warning_counts_as_delivered_and_a_refusal_retries_alone(db: Database, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.results.outbox")
    port = free_port()
    settings = _settings(port, aetitle="TESTSCP")
    order = _store(db, tmp_path, [keyframes()], settings)  # SC, SR, KO
    received: list[str] = []
    statuses = {"1.2.840.10008.5.1.4.1.1.7": 0xA700, "1.2.840.10008.5.1.4.1.1.88.33": 0xB000}
    with storage_scp(statuses, port, received):
        report = deliver_due(db, settings, tmp_path, now=T0)
        assert (report.delivered, report.warnings, report.retrying) == (2, 1, 1)
        rows = _rows(db)
        assert [(r.state, r.last_status) for r in rows] == [
            ("pending", 0xA700), ("delivered", 0xB000), ("delivered", 0x0000)]
        assert rows[0].next_attempt_at == T0 + dt.timedelta(seconds=1)
        assert "0xA700 (Refused: out of resources)" in pending_deliveries(db)[0].reason()
        assert any("with 0xB000" in r.getMessage() for r in caplog.records)
        statuses.clear()
        report = deliver_due(db, settings, tmp_path, now=T0 + dt.timedelta(seconds=1))
        assert report.delivered == 1
    assert received == [order[0], order[1], order[2], order[0]]
    assert pending_deliveries(db) == []


def test_attempts_run_out_and_the_delivery_is_marked_failed_but_not_dropped(db: Database,
                                                                           tmp_path: Path) -> None:
    settings = _settings(free_port(), max_attempts=2)  # nobody listens there
    _store(db, tmp_path, [keyframes()], settings)
    deliver_due(db, settings, tmp_path, now=T0)
    report = deliver_due(db, settings, tmp_path, now=T0 + dt.timedelta(seconds=1))
    assert report.failed == 3
    # Failed (shown in status), and the destination is tried again at the capped backoff.
    waiting = T0 + dt.timedelta(seconds=3)
    assert {(r.state, r.attempts, r.next_attempt_at) for r in _rows(db)} == {("failed", 2, waiting)}
    assert [(s.pending, s.failed) for s in pending_summary(db)] == [(0, 3)]
    assert deliver_due(db, settings, tmp_path, now=T0 + dt.timedelta(seconds=2)).failed == 0
    assert deliver_due(db, settings, tmp_path, now=T0 + dt.timedelta(hours=1)).failed == 3
    assert {(r.state, r.attempts) for r in _rows(db)} == {("failed", 3)}


def test_a_destination_missing_from_the_config_is_reported_not_dropped(db: Database,
                                                                       tmp_path: Path) -> None:
    settings = _settings(free_port())
    scenario = keyframes()
    objects = build_results(scenario.findings, [], scenario.sources, settings)
    store_results(db, tmp_path, None, objects, ["gone"], now=T0)
    deliver_due(db, settings, tmp_path, now=T0)
    pending = pending_deliveries(db)
    assert [p.destination for p in pending] == ["gone"] * len(objects)
    assert "no destination named 'gone'" in pending[0].reason()


@pytest.mark.slow
def test_storage_commitment_confirms_what_orthanc_keeps(orthanc_factory: Callable[..., OrthancServer],
                                                        db: Database, tmp_path: Path) -> None:
    node_port = free_port()
    orthanc = orthanc_factory(modalities={"dicomnode": ["DICOMNODE", "127.0.0.1", node_port]})
    settings = make_settings(
        node={"aetitle": "DICOMNODE"},
        destinations=[{"name": "pacs", "aetitle": orthanc.aetitle, "host": "127.0.0.1",
                       "port": orthanc.dicom_port, "storage_commitment": True}],
    )
    uids = _store(db, tmp_path, [keyframes()], settings)
    reports: list = []

    def on_report(report) -> None:  # what the receiver wires up
        reports.append(report)
        record_commitment(db, settings, report.calling_ae, report.committed, report.failed)

    with storage_scp({}, node_port, [], handlers=[commitment_report_handler(on_report)]):
        assert deliver_due(db, settings, tmp_path).delivered == 3
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r.committed_at for r in _rows(db)):
            time.sleep(0.2)
    assert reports and set(reports[0].committed) == set(uids) and reports[0].failed == ()
    assert all(r.committed_at is not None for r in _rows(db))
    assert [s.uncommitted for s in pending_summary(db)] == [0]
    with db.session() as s:
        assert s.scalar(select(Result.id).order_by(Result.id.desc())) == 3
