"""The metrics endpoint of a receive-only node reports the C-STOREs this test sent.

A ``--role receiver`` node (no worker processes, so no torch: it starts in seconds)
on SQLite with ``[metrics] port`` set; dcmtk's storescu sends two instances and one
of them again.  The scale-out test checks the job and delivery figures on PostgreSQL.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import NodeProcess, free_port, storescu
from dicom_factory import make_dataset, uid, write
from scaleout.cluster import scrape, wait_for


def _metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class ReceiverNode(NodeProcess):
    """``dicomnode run --role receiver``."""

    def start(self, wait: bool = True) -> None:
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli.main", "run", "--role", "receiver",
             "--config", str(self.config_path), "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--bind", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait:
            self.wait_listening()


def test_metrics_endpoint_counts_received_instances_bytes_and_store_latency(tmp_path: Path) -> None:
    metrics_port = free_port()
    node = ReceiverNode(data_dir=tmp_path / "node", port=free_port(),
                        config={"node": {"fsync": False}, "metrics": {"port": metrics_port}})
    node.data_dir.mkdir()
    node.start()
    try:
        before = scrape(metrics_port)
        assert _metric(before, "dicomnode_instances_received_total", outcome="stored") == 0
        assert _metric(before, "dicomnode_index_up") == 1
        study = uid()
        files = [write(make_dataset(study_uid=study, rows=16, columns=16, seed=i), tmp_path / f"{i}.dcm")
                 for i in range(2)]
        assert storescu(node.port, *files, files[0]).returncode == 0  # the first one twice
        after = wait_for(lambda: (m := scrape(metrics_port)) and _metric(
            m, "dicomnode_store_seconds_count") == 3 and m, 30, "three ingests observed")
        assert _metric(after, "dicomnode_instances_received_total", outcome="stored") == 2
        assert _metric(after, "dicomnode_instances_received_total", outcome="duplicate") == 1
        assert _metric(after, "dicomnode_instances_received_total", outcome="refused") == 0
        assert _metric(after, "dicomnode_index_instances_total") == 2
        status = json.loads(node.cli("status", "--json").stdout)
        assert status["stages"]["received"]["instances"] == 2
        # bytes counted as received = bytes the index holds for them
        assert _metric(after, "dicomnode_received_bytes_total") == status["bytes"] \
            == _metric(after, "dicomnode_index_bytes_total") > 0
        assert "dicomnode_job_seconds" not in {k[0] for k in after}  # nothing ran: no samples yet
    finally:
        node.stop()
