"""``dicomnode run``: the worker role runs in a child process that reports through the node and dies with it."""
from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NodeProcess, child_pids, free_port, pid_alive, storescu
from dicom_factory import ct_instance
from prometheus_client.parser import text_string_to_metric_families


def _completion_waits(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "dicomnode_completion_wait_seconds_count")


@pytest.mark.slow
def test_the_worker_role_reports_through_the_node_and_dies_with_it(
        node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    metrics_port = free_port()
    node = node_factory(config={"metrics": {"port": metrics_port},
                                "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 1},
                                "jobs": {"workers": 1}})
    assert node.proc is not None
    pid = node.proc.pid
    deadline = time.monotonic() + 30  # started just after the receiver listens
    while time.monotonic() < deadline and not (spawned := [
            c for c in child_pids(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]):
        time.sleep(0.1)
    [worker_role] = spawned
    assert _completion_waits(metrics_port) == 0
    res = storescu(node.port, ct_instance(tmp_path / "ct.dcm"))
    assert res.returncode == 0, res.stderr
    # The scheduler in the child routes the study; the node's endpoint counts it.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _completion_waits(metrics_port) < 1:
        time.sleep(0.5)
    assert _completion_waits(metrics_port) == 1, node.log()[-3000:]
    node.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(worker_role):
        time.sleep(0.1)
    assert not pid_alive(worker_role), "the worker role outlived a kill -9 of its node"
