"""``node.receive_processes``: several processes accept on the node's one listening socket."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import NodeProcess, free_port, pid_alive, poll_until, storescu
from dicom_factory import mr_series
from prometheus_client.parser import text_string_to_metric_families

ACCEPTING = re.compile(r"receiving process (\d+) accepting")
SERVED_BY = re.compile(r"association from .* closed: (\d+) stored.* \(process (\d+)\)")


def _stored_count(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "dicomnode_instances_received_total" and s.labels.get("outcome") == "stored")


def _push_parallel(port: int, chunks: list[list[Path]]) -> None:
    with ThreadPoolExecutor(len(chunks)) as pool:
        results = list(pool.map(lambda files: storescu(port, *files), chunks))
    for res in results:
        assert res.returncode == 0, res.stderr[-2000:]


def test_two_receiving_processes_share_one_port_store_everything_once_and_restart(
        node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    metrics_port = free_port()
    node = node_factory(config={"node": {"receive_processes": 2}, "jobs": {"workers": 0},
                                "metrics": {"port": metrics_port}})
    log = node.log()
    assert "listening as DICOMNODE" in log and "in 2 processes" in log
    [extra] = [int(p) for p in ACCEPTING.findall(log)]
    assert node.proc is not None and extra != node.proc.pid

    # Rounds of 8 parallel associations until both processes have served some (the
    # kernel wakes both; whichever accepts first takes the connection).
    files: list[Path] = []
    for round_ in range(6):
        batch = mr_series(tmp_path / f"r{round_}", n=32)
        files += batch
        _push_parallel(node.port, [batch[i::8] for i in range(8)])
        served = {int(pid) for _, pid in SERVED_BY.findall(node.log())}
        if len(served) == 2:
            break
    assert served == {node.proc.pid, extra}, node.log()[-3000:]
    stored = sum(int(n) for n, _ in SERVED_BY.findall(node.log()))
    assert stored == len(files)

    studies = json.loads(node.cli("studies", "list", "--json").stdout)
    assert sum(s["instance_count"] for s in studies) == len(files)  # each instance once
    # Each process's store counts reach the node's one metrics endpoint.
    assert _stored_count(metrics_port) == len(files)

    # The port is the node's alone: a second node cannot bind it (no SO_REUSEPORT).
    other = node_factory(start=False, name="other")
    other.port = node.port
    other.start(wait=False)
    assert other.proc is not None and other.proc.wait(60) != 0
    assert "cannot listen" in other.log()

    # A receiving process that dies is started again; the node keeps receiving meanwhile.
    (node.data_dir / "spool" / "tmp" / f"{extra}-1-1.dcm").write_bytes(b"partial")  # as a crash leaves
    subprocess.run(["kill", "-9", str(extra)], check=True)
    more = mr_series(tmp_path / "during", n=8)
    _push_parallel(node.port, [more])
    restarted = poll_until(lambda: [int(p) for p in ACCEPTING.findall(node.log()) if int(p) != extra],
                           timeout=60, what="the receiving process started again")
    assert not (node.data_dir / "spool" / "tmp" / f"{extra}-1-1.dcm").exists()
    last = mr_series(tmp_path / "after", n=16)
    _push_parallel(node.port, [last[i::8] for i in range(8)])
    total = len(files) + len(more) + len(last)
    studies = json.loads(node.cli("studies", "list", "--json").stdout)
    assert sum(s["instance_count"] for s in studies) == total

    # SIGTERM stops every process cleanly; nothing partial is left.
    assert node.stop(signal.SIGTERM, timeout=60) == 0
    assert not pid_alive(restarted[0]) and not pid_alive(extra)
    assert list((node.data_dir / "spool" / "tmp").iterdir()) == []


def test_a_killed_node_takes_its_receiving_processes_with_it(
        node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(config={"node": {"receive_processes": 3}, "jobs": {"workers": 0}})
    extras = [int(p) for p in ACCEPTING.findall(node.log())]
    assert len(extras) == 2 and all(pid_alive(p) for p in extras)
    node.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in extras):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in extras), "a receiving process outlived a kill -9 of its node"
