"""kill -9 of the node while its outbox is in the middle of a C-STORE to the PACS.

The PACS here is a pynetdicom Storage SCP in the test process that holds its answer
to the first C-STORE until the node is dead, so the kill lands exactly between "the
PACS has the object" and "the node knows it does" (the only window where a sender
can duplicate).  Jobs of later studies are usually running in their worker at the
same moment, so the same kill interrupts them too.

What is asserted after the restart (results.md, "Identity and supersession": result
UIDs are derived from the inputs, so a retried send or job sends *the same*
objects):

- every job is done once, with one result set (one SR, one SC), no second one;
- the PACS holds exactly the index's result SOP Instance UIDs, nothing else;
- the object whose answer was lost is sent again with the same SOP Instance UID
  (received twice: allowed, the PACS keeps one instance), every other one once;
- the restarted node re-sends the dead sender's claims at once, not after the
  claim lease (300 s);
- every Delivery is ``delivered`` with one ``delivered`` audit Event.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, storescu
from dicom_factory import make_dataset, uid, write
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.results.outbox import CLAIM_SECONDS
from dicomnode.storage.models import Delivery, Event, Job, Result


@contextmanager
def holding_scp(port: int, received: list[str], answering: threading.Event,
                holding: threading.Event) -> Iterator[None]:
    """A Storage SCP that sets ``holding`` on the first C-STORE and answers it only once
    ``answering`` is set; every later C-STORE is answered 0x0000 at once."""
    def handle_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == 1:
            holding.set()
            answering.wait(60)
        return 0x0000

    ae = AE(ae_title="TESTSCP")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        yield
    finally:
        answering.set()
        server.shutdown()


@pytest.mark.slow
def test_kill_9_mid_delivery_resends_the_same_objects_and_runs_no_job_twice(
        delivering_node: Any, index: Any, wait_for: Any, tmp_path: Path) -> None:
    port = free_port()
    received: list[str] = []
    answering, holding = threading.Event(), threading.Event()
    with holding_scp(port, received, answering, holding):
        node = delivering_node(port, "TESTSCP")
        db = index(node)
        studies = []
        for i in range(4):
            study = uid()
            path = write(make_dataset(study_uid=study, SeriesDescription=f"echo kill {i}",
                                      rows=32, columns=32, StudyDescription="kill mid delivery"),
                         tmp_path / f"{i}.dcm")
            assert storescu(node.port, path).returncode == 0
            studies.append(study)
        assert holding.wait(120), "the first delivery never reached the PACS"
        node.kill()  # SIGKILL while the PACS holds its answer to the first C-STORE
        answering.set()
        held = received[0]
        with db.session() as s:
            claimed = s.scalars(select(Delivery).where(Delivery.claimed_by != "")).all()
            running = s.scalars(select(Job).where(Job.state == "running")).all()
        assert claimed, "the kill must leave a claimed delivery behind"

        restarted = time.monotonic()
        node.start()

        def finished() -> bool:
            with db.session() as s:
                jobs = s.scalars(select(Job)).all()
                rows = s.scalars(select(Delivery)).all()
            return (len(jobs) == 4 and all(j.state == "done" for j in jobs)
                    and len(rows) == 8 and all(r.state == "delivered" for r in rows))

        wait_for(finished, 120, "every job done and every result delivered after the restart")
        took = time.monotonic() - restarted
    assert took < CLAIM_SECONDS / 3, f"dead claims waited for the lease ({took:.0f} s)"

    with db.session() as s:
        jobs = s.scalars(select(Job)).all()
        results = s.scalars(select(Result)).all()
        deliveries = s.scalars(select(Delivery)).all()
        delivered = s.scalars(select(Event).where(Event.kind == "delivered")).all()
    assert sorted(j.study_instance_uid for j in jobs) == sorted(studies)  # one job per study
    by_job = Counter((r.job_fk, r.kind) for r in results)
    assert sorted(by_job) == sorted((j.id, k) for j in jobs for k in ("SC", "SR"))
    assert set(by_job.values()) == {1}  # one result set per job, never a second
    uids = {r.sop_instance_uid for r in results}
    counts = Counter(received)
    assert set(counts) == uids  # the PACS holds what the index says, nothing else
    assert counts[held] == 2  # its answer was lost: sent again, same SOP Instance UID
    assert all(n == 1 for u, n in counts.items() if u != held), counts
    assert all(d.attempts >= 1 and d.claimed_by == "" for d in deliveries)
    assert Counter(e.detail["delivery_id"] for e in delivered) == {d.id: 1 for d in deliveries}
    assert "died mid-send are due again" in node.log()
    interrupted = [j.id for j in running]
    for job in jobs:  # a job the kill interrupted ran again and finished once
        assert job.attempts == (2 if job.id in interrupted else 1), (job.id, job.attempts)
