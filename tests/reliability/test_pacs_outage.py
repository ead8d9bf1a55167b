"""PACS down for longer than the retry cap, then back: everything delivered, once, in order.

What a clinical node does (``dicomnode/results/outbox.py``): a delivery whose
``delivery.max_attempts`` are spent is marked ``failed`` (``dicomnode status``
shows it) but never dropped.  When it failed because the destination could not be
reached, the destination is tried again at the capped backoff, and as soon as a
newer object for it is due; the old rows then go first, so the PACS gets every
object in the order the node produced it.  An object the PACS *refused* stays
failed until an operator sends it again (re-running the job, or ``requeue_failed``).

The first two tests run the outbox in the test process against a real Orthanc that
is really down (not started) and then started; ``now`` steps through the backoff
schedule.  The last runs the whole node (``dicomnode run``) with Orthanc down until
every delivery has failed, reads ``dicomnode status --json``, then starts Orthanc.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import OrthancServer, free_port, storescu
from dicom_factory import make_dataset, uid, write
from pynetdicom import AE, AllStoragePresentationContexts, evt
from results.conftest import make_settings
from results.scenarios import keyframes, mtici, spine
from results.test_outbox import _orthanc_order, _rows, _store, storage_scp
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.results import build_results, deliver_due, pending_summary, store_results
from dicomnode.results.outbox import requeue_failed
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.models import Delivery, Event, Result

T0 = dt.datetime(2026, 3, 2, 8, 0, 0)
S = dt.timedelta(seconds=1)


def _settings(port: int, aetitle: str = "ORTHANC", max_attempts: int = 2) -> Settings:
    return make_settings(
        node={"aetitle": "DICOMNODE", "acse_timeout": 5, "dimse_timeout": 20, "network_timeout": 20},
        destinations=[{"name": "pacs", "aetitle": aetitle, "host": "127.0.0.1", "port": port}],
        delivery={"retry_backoff_seconds": [1.0, 2.0, 4.0], "max_attempts": max_attempts},
    )


def _events(db: Database, kind: str) -> list[Event]:
    with db.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_pacs_down_past_the_retry_cap_gets_everything_in_order_when_back(
        orthanc_factory: Callable[..., OrthancServer], tmp_path: Path) -> None:
    orthanc = orthanc_factory(start=False)  # down when the first results are stored
    settings = _settings(orthanc.dicom_port)
    spool = tmp_path / "spool"
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        first = _store(db, spool, [keyframes()], settings, now=T0)  # SC, SR, KO
        assert deliver_due(db, settings, spool, now=T0).retrying == 3
        assert deliver_due(db, settings, spool, now=T0 + S).failed == 3  # max_attempts = 2
        assert {(r.state, r.attempts) for r in _rows(db)} == {("failed", 2)}
        (summary,) = pending_summary(db)  # what `dicomnode status` prints
        assert (summary.pending, summary.failed, summary.delivered) == (0, 3, 0)
        assert "no association" in summary.last_error
        assert summary.next_attempt_at == T0 + 3 * S  # the capped backoff: tried again then

        # Newer results while the PACS is still down: the old failed rows are tried with them.
        second = _store(db, spool, [spine()], settings, now=T0 + 2 * S)  # SC, SR
        report = deliver_due(db, settings, spool, now=T0 + 2 * S)
        assert (report.failed, report.retrying, report.delivered) == (3, 2, 0)

        orthanc.start()  # back, long after the cap
        report = deliver_due(db, settings, spool, now=T0 + 3 * S)
        assert (report.delivered, report.failed, report.retrying) == (5, 0, 0)
        assert _orthanc_order(orthanc) == first + second  # once each, in creation order

        # Down again, past the cap, and back with nothing newer: the waiting rows go at
        # their own next attempt (the capped backoff).
        orthanc.stop()
        third = _store(db, spool, [mtici()], settings, now=T0 + 10 * S)
        deliver_due(db, settings, spool, now=T0 + 10 * S)
        assert deliver_due(db, settings, spool, now=T0 + 11 * S).failed == len(third)
        orthanc.start()
        assert deliver_due(db, settings, spool, now=T0 + 12 * S).delivered == 0  # not due yet
        assert deliver_due(db, settings, spool, now=T0 + 13 * S).delivered == len(third)
        assert _orthanc_order(orthanc) == first + second + third
        assert {r.state for r in _rows(db)} == {"delivered"}
        assert [(s.pending, s.failed, s.delivered) for s in pending_summary(db)] == [
            (0, 0, 5 + len(third))]

        # The audit trail: what was sent where, to which AE, when, and how it went.
        delivered = _events(db, "delivered")
        assert [e.sop_instance_uid for e in delivered] == first + second + third
        peer = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        assert {(e.calling_ae, e.peer, e.detail["destination"], e.detail["called_ae"],
                 e.detail["status"]) for e in delivered} == {("DICOMNODE", peer, "pacs", "ORTHANC", 0)}
        assert [e.at for e in delivered] == [T0 + 3 * S] * 5 + [T0 + 13 * S] * len(third)
        assert all(e.study_instance_uid and e.detail["result_kind"] in {"SR", "SC", "KO"}
                   for e in delivered)
        failed = _events(db, "delivery-failed")
        assert [e.sop_instance_uid for e in failed] == first + first + third
        assert all(e.detail["waiting_for_destination"] for e in failed)
        unreachable = _events(db, "delivery-unreachable")
        assert [(e.at, e.detail["objects"]) for e in unreachable] == [
            (T0, 3), (T0 + S, 3), (T0 + 2 * S, 5), (T0 + 10 * S, len(third)),
            (T0 + 11 * S, len(third))]
    finally:
        db.dispose()


def test_an_object_the_pacs_refused_waits_for_the_operator_then_goes(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(port, aetitle="TESTSCP", max_attempts=1)
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        scenario = keyframes()
        objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
        store_results(db, tmp_path, None, objects, ["pacs"], now=T0)
        received: list[str] = []
        refuse = {"1.2.840.10008.5.1.4.1.1.7": 0xA900}  # the SC: "does not match SOP class"
        with storage_scp(refuse, port, received):
            report = deliver_due(db, settings, tmp_path, now=T0)
            assert (report.delivered, report.failed) == (2, 1)
            (sc,) = [r for r in _rows(db) if r.state == "failed"]
            assert (sc.last_status, sc.next_attempt_at) == (0xA900, None)  # not retried by itself
            assert deliver_due(db, settings, tmp_path, now=T0 + 3600 * S).failed == 0
            (event,) = _events(db, "delivery-failed")
            assert event.detail["status"] == 0xA900 and not event.detail["waiting_for_destination"]

            refuse.clear()  # the PACS is fixed; the operator re-runs the job: same objects
            again = build_results(scenario.findings, scenario.images, scenario.sources, settings)
            stored = store_results(db, tmp_path, None, again, ["pacs"], now=T0 + 3601 * S)
            assert not any(s.created for s in stored)  # same SOP Instance UIDs, no new results
            assert deliver_due(db, settings, tmp_path, now=T0 + 3601 * S).delivered == 1
            assert {r.state for r in _rows(db)} == {"delivered"}

            refuse["1.2.840.10008.5.1.4.1.1.7"] = 0xA700
            third = keyframes()
            objects = build_results(third.findings, third.images, third.sources, settings)
            store_results(db, tmp_path, None, objects, ["pacs"], now=T0 + 4000 * S)
            assert deliver_due(db, settings, tmp_path, now=T0 + 4000 * S).failed == 1
            refuse.clear()
            assert requeue_failed(db, "pacs", now=T0 + 4001 * S) == 1  # the operator's resend
            assert deliver_due(db, settings, tmp_path, now=T0 + 4001 * S).delivered == 1
        sc_uids = [o.sop_instance_uid for o in [*objects, *again] if o.kind == "SC"]
        assert received.count(sc_uids[1]) == 2  # refused, then resent: same SOP Instance UID
        assert {r.state for r in _rows(db)} == {"delivered"}
    finally:
        db.dispose()


@pytest.mark.slow
def test_the_node_shows_deliveries_failed_while_the_pacs_is_down_and_sends_them_in_order_after(
        delivering_node: Any, orthanc_factory: Callable[..., OrthancServer], index: Any,
        wait_for: Any, tmp_path: Path) -> None:
    orthanc = orthanc_factory(start=False)  # the PACS is down from the start
    node = delivering_node(orthanc.dicom_port, "ORTHANC", start=False)
    node.config["delivery"] = {"retry_backoff_seconds": [1, 3], "max_attempts": 2}
    node.start()
    db = index(node)
    for i in range(3):
        path = write(make_dataset(study_uid=uid(), SeriesDescription=f"echo outage {i}", rows=32,
                                  columns=32), tmp_path / f"{i}.dcm")
        assert storescu(node.port, path).returncode == 0

    def deliveries() -> list[Delivery]:
        with db.session() as s:
            return list(s.scalars(select(Delivery).order_by(Delivery.created_at, Delivery.id)))

    wait_for(lambda: len(rows := deliveries()) == 6 and all(r.state == "failed" for r in rows), 180,
             "all six deliveries to run out of attempts")
    status = json.loads(node.cli("status", "--json").stdout)
    (pacs,) = status["deliveries"]
    assert (pacs["destination"], pacs["pending"], pacs["failed"], pacs["delivered"]) == ("pacs", 0, 6, 0)
    assert pacs["next_attempt_at"] and "no association" in pacs["last_error"]

    orthanc.start()
    wait_for(lambda: all(r.state == "delivered" for r in deliveries()), 60,
             "the failed deliveries to go once the PACS is back")
    with db.session() as s:
        order = [s.get(Result, d.result_fk).sop_instance_uid for d in deliveries()]
        sent = s.scalars(select(Event).where(Event.kind == "delivered").order_by(Event.id)).all()
    assert _orthanc_order(orthanc) == order  # all six, once each, in the order they were made
    assert [e.sop_instance_uid for e in sent] == order
    assert {e.peer for e in sent} == {f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"}
    (pacs,) = json.loads(node.cli("status", "--json").stdout)["deliveries"]
    assert (pacs["pending"], pacs["failed"], pacs["delivered"]) == (0, 0, 6)


def test_an_object_that_makes_the_pacs_abort_never_holds_back_the_others(
        tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(port, aetitle="POISON", max_attempts=2)
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        scenario = keyframes()
        objects = build_results(scenario.findings, scenario.images, scenario.sources, settings)
        store_results(db, tmp_path, None, objects, ["pacs"], now=T0)  # SC, SR, KO in this order
        poison = objects[0].sop_instance_uid
        assert objects[0].kind == "SC"
        received: list[str] = []

        def store(event: Any) -> int:
            received.append(str(event.request.AffectedSOPInstanceUID))
            if received[-1] == poison:
                event.assoc.abort()  # the PACS drops the association on this object
            return 0x0000

        ae = AE(ae_title="POISON")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        server = ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, store)])
        try:
            # The SC goes first and the association dies under it; SR and KO never had
            # their turn: not an attempt, due at once, and the next call sends them
            # on a new association while the SC waits for its backoff.
            report = deliver_due(db, settings, tmp_path, now=T0)
            assert (report.delivered, report.retrying) == (0, 3)
            sc, sr, ko = _rows(db)
            assert (sc.attempts, sr.attempts, ko.attempts) == (1, 0, 0)
            assert deliver_due(db, settings, tmp_path, now=T0).delivered == 2
            assert deliver_due(db, settings, tmp_path, now=T0 + S).failed == 1  # aborts again
        finally:
            server.shutdown()
        sc, sr, ko = _rows(db)
        assert (sc.state, sc.attempts, sc.next_attempt_at) == ("failed", 2, None)  # to the operator
        assert (sr.state, ko.state) == ("delivered", "delivered")
        assert received == [poison, *(o.sop_instance_uid for o in objects[1:]), poison]
    finally:
        db.dispose()
