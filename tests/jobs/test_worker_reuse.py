"""A worker process that has run ``jobs.max_jobs_per_process`` jobs is replaced while idle.

Replaced only when the next job was claimed, that job waited for the fresh process to
import torch and the modules (~2.5 s: the p95 of mtici's push-to-result latency).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import storescu
from dicom_factory import make_dataset, uid, write


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def _worker_processes(node_pid: int) -> set[int]:
    """The job processes: children of the node's worker-role child."""
    return {pid for role in _children(node_pid) for pid in _children(role)}


def _push_echo(node: Any, directory: Path) -> None:
    path = write(make_dataset(study_uid=uid(), SeriesDescription="echo", rows=32, columns=32),
                 directory / f"{uid()}.dcm")
    assert storescu(node.port, path).returncode == 0


def _ends(node: Any) -> list[int]:
    if not node.marks.exists():
        return []
    return [int(p[1]) for p in (line.split() for line in node.marks.read_text().splitlines()) if p[0] == "end"]


@pytest.mark.slow
def test_a_worker_process_is_replaced_while_idle_after_its_last_job(
        jobs_node: Any, wait_for: Any, tmp_path: Path) -> None:
    node = jobs_node(max_jobs_per_process=2)
    for n in (1, 2):
        _push_echo(node, tmp_path)
        wait_for(lambda n=n: len(_ends(node)) == n, 120, f"echo job {n} to finish")
    first, second = _ends(node)
    assert first == second  # one warm process ran both
    wait_for(lambda: f"worker process {first} replaced after 2 jobs" in node.log(), 30,
             "the used-up worker process to be replaced")
    # The fresh process exists (and warms up) before the next study has even arrived.
    fresh = wait_for(lambda: _worker_processes(node.proc.pid) - {first}, 30, "a fresh worker process")
    assert first not in _worker_processes(node.proc.pid)
    _push_echo(node, tmp_path)
    wait_for(lambda: len(_ends(node)) == 3, 120, "echo job 3 to finish")
    assert _ends(node)[2] in fresh
