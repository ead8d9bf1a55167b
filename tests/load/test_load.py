"""Load: 16 parallel dcmtk storescu associations × 100 instances, C-ECHO every 100 ms throughout.

Every instance must be stored exactly once (index rows, spool files, per-sender
counts and the CLI's study counts equal what was sent), every C-ECHO must
succeed (its p99 latency is reported), and while the 16 senders hold every
association slot the node has, one more association is refused at once with an
A-ASSOCIATE-RJ rather than left hanging.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import NodeProcess, dcmtk
from dicom_factory import ROOT, make_dataset, write
from fuzz.figures import note
from fuzz.harness import check_index_matches_spool, events, start_node, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification

STREAMS, PER_STREAM = 16, 100
#: 16 storescu + the echo association: exactly full during the load.
MAX_ASSOCIATIONS = STREAMS + 1
ECHO_EVERY = 0.1
ECHO_BOUND = 5.0


def make_streams(directory: Path) -> dict[str, list[Path]]:
    """``PER_STREAM`` small MR instances per sender, one study each.

    One file per stream is written by pydicom; the others are byte copies with the
    SOP Instance UID swapped for another of the same length (1600 files in well
    under a second even on a busy machine).
    """
    run = int(time.time() * 1000) % 10**9
    streams: dict[str, list[Path]] = {}
    for s in range(STREAMS):
        prefix = f"{ROOT}{run}.{s + 10}"  # two digits, no leading zero (PS3.5 §9.1)
        template_uid = f"{prefix}.9999"
        ds = make_dataset(rows=16, columns=16, sop_uid=template_uid,
                          study_uid=f"{prefix}.1", series_uid=f"{prefix}.2")
        template = write(ds, directory / f"template{s:02d}.dcm").read_bytes()
        files = []
        for i in range(PER_STREAM):
            path = directory / f"s{s:02d}" / f"{i:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(template.replace(template_uid.encode(), f"{prefix}.{i + 1000}".encode()))
            files.append(path)
        streams[f"LOAD{s:02d}"] = files
    return streams


class Echoer(threading.Thread):
    """C-ECHO on one association every ``ECHO_EVERY`` s; latencies and failures recorded."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(Verification)
        ae.dimse_timeout = 30
        assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
        if not assoc.is_established:
            self.failures.append("echo association refused")
            self.ready.set()
            return
        self.ready.set()
        next_at = time.monotonic()
        while not self.stop.is_set():
            start = time.monotonic()
            rsp = assoc.send_c_echo()
            elapsed = time.monotonic() - start
            if rsp is None or rsp.get("Status") != 0:
                self.failures.append(f"echo failed after {elapsed:.2f} s")
                if not assoc.is_established:
                    return
            else:
                self.latencies.append(elapsed)
            next_at += ECHO_EVERY
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        assoc.release()


def counts_by_sender(node: NodeProcess) -> dict[str, int]:
    con = sqlite3.connect(node.data_dir / "index.sqlite", timeout=30)
    try:
        rows = con.execute("select calling_ae, count(*) from instance group by calling_ae").fetchall()
    finally:
        con.close()
    return dict(rows)


def probe(port: int) -> tuple[bool, float]:
    """One more association: (rejected with A-ASSOCIATE-RJ, seconds to the answer)."""
    ae = AE(ae_title="ONEMORE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 30
    start = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    elapsed = time.monotonic() - start
    if assoc.is_established:
        assoc.release()
    return assoc.is_rejected, elapsed


@pytest.fixture(scope="module")
def load_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("load-node"),
                      config={"node": {"max_associations": MAX_ASSOCIATIONS}})
    yield node
    node.stop()


@pytest.mark.slow
def test_sixteen_parallel_senders_store_every_instance_once_while_echo_answers(
    load_node: NodeProcess, tmp_path: Path
) -> None:
    streams = make_streams(tmp_path)
    echoer = Echoer(load_node.port)
    echoer.start()
    assert echoer.ready.wait(30) and not echoer.failures

    start = time.monotonic()
    senders = {ae: subprocess.Popen([dcmtk("storescu"), "-aet", ae, "-aec", "DICOMNODE", "127.0.0.1",
                                     str(load_node.port), *map(str, files)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for ae, files in streams.items()}
    probes: list[tuple[bool, float, bool]] = []  # rejected, seconds, all 16 certainly connected
    while any(p.poll() is None for p in senders.values()) and len(probes) < 5:
        counts = counts_by_sender(load_node)
        if len(counts) == STREAMS and all(1 <= counts[ae] <= PER_STREAM - 10 for ae in streams):
            rejected, seconds = probe(load_node.port)
            # Each sender had stored one instance before the probe and not its last after it,
            # so all 16 associations (and the echo's) were open throughout.
            after = counts_by_sender(load_node)
            probes.append((rejected, seconds, all(after[ae] < PER_STREAM for ae in streams)))
            time.sleep(0.5)
        else:
            time.sleep(0.1)
    outputs = {ae: p.communicate(timeout=600)[0] for ae, p in senders.items()}
    elapsed = time.monotonic() - start
    echoer.stop.set()
    echoer.join(30)

    for ae, p in senders.items():
        assert p.returncode == 0, f"{ae}: {outputs[ae][-2000:]}"
    assert echoer.failures == []
    latencies = np.array(echoer.latencies)
    p50, p99 = np.percentile(latencies, [50, 99])
    line = (f"load: {STREAMS}x{PER_STREAM} instances in {elapsed:.1f} s "
            f"({STREAMS * PER_STREAM / elapsed:.0f}/s); {len(latencies)} C-ECHOs, "
            f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {latencies.max() * 1000:.0f} ms; "
            f"{sum(r for r, _, _ in probes)}/{len(probes)} extra associations rejected, "
            f"slowest answer {max((s for _, s, _ in probes), default=0):.2f} s")
    print(line)
    note(line)
    assert latencies.max() < ECHO_BOUND
    assert len(latencies) >= elapsed / ECHO_EVERY / 4  # it kept echoing through the load

    # Over the limit: refused at once, never hung; while full, always an A-ASSOCIATE-RJ.
    conclusive = [p for p in probes if p[2]]
    assert conclusive, f"no probe while all {STREAMS} senders were connected: {probes}"
    assert all(rejected for rejected, _, _ in conclusive)
    assert all(seconds < ECHO_BOUND for _, seconds, _ in probes)
    reasons = {e["detail"]["reason"] for e in events(load_node, "association-rejected")}
    assert reasons == {"association limit reached"}

    # Every instance stored exactly once.
    assert counts_by_sender(load_node) == {ae: PER_STREAM for ae in streams}
    assert check_index_matches_spool(load_node) == STREAMS * PER_STREAM
    studies = json.loads(load_node.cli("studies", "list", "--json").stdout)
    assert sorted(s["instance_count"] for s in studies) == [PER_STREAM] * STREAMS
    received = wait_for(lambda: e if len(e := events(load_node, "received")) >= STREAMS else None)
    assert sorted((e["calling_ae"], e["detail"]["instances"]) for e in received) == sorted(
        (ae, PER_STREAM) for ae in streams)
