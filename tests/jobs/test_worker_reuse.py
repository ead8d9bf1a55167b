"""A worker process that has run ``jobs.max_jobs_per_process`` jobs is replaced by a
successor that warmed up beside it.

Replaced only when the next job was claimed, that job waited for the fresh process to
import torch and the modules (seconds: the p95 of mtici's push-to-result latency).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids, storescu
from dicom_factory import make_dataset, uid, write


def _worker_processes(node_pid: int) -> set[int]:
    """The job processes: children of the node's worker-role child."""
    return {pid for role in child_pids(node_pid) for pid in child_pids(role)}


def _push_echo(node: Any, directory: Path) -> None:
    path = write(make_dataset(study_uid=uid(), SeriesDescription="echo", rows=32, columns=32),
                 directory / f"{uid()}.dcm")
    assert storescu(node.port, path).returncode == 0


def _ends(node: Any) -> list[int]:
    if not node.marks.exists():
        return []
    return [int(p[1]) for p in (line.split() for line in node.marks.read_text().splitlines()) if p[0] == "end"]


@pytest.mark.slow
def test_a_used_up_worker_process_hands_over_to_a_successor_already_warm(
        jobs_node: Any, wait_for: Any, tmp_path: Path) -> None:
    node = jobs_node(max_jobs_per_process=2)
    for n in (1, 2):
        _push_echo(node, tmp_path)
        wait_for(lambda n=n: len(_ends(node)) == n, 120, f"echo job {n} to finish")
    first, second = _ends(node)
    assert first == second  # one warm process ran both
    # Its successor is started at once and takes over once warm, before any next study.
    found = wait_for(lambda: re.search(rf"worker process {first} replaced after 2 jobs by (\d+)", node.log()),
                     60, "the used-up worker process to be replaced")
    successor = int(found.group(1))
    wait_for(lambda: _worker_processes(node.proc.pid) == {successor}, 30, "the used-up process to exit")
    _push_echo(node, tmp_path)
    wait_for(lambda: len(_ends(node)) == 3, 120, "echo job 3 to finish")
    assert _ends(node)[2] == successor
