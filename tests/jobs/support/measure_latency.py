"""Measure completion-to-job-start latency on a running node (not a test: prints JSON).

    python tests/jobs/support/measure_latency.py [--n 10] [--sweep 1.0]

Starts ``dicomnode run`` with the test modules (``echo``: a tiny network, so the job
itself is short), waits until its warm worker process is ready, then pushes N
one-instance studies one after another with dcmtk's storescu and waits for each job.
From the index it reports, per study (all times from the node's own timestamps):

``detect_s``      quiet period end (last new series + study_quiet_seconds) → ``completed_at``
``route_s``       ``completed_at`` → job row created (rules evaluated, job queued)
``claim_s``       job created → claimed by a worker slot (``started_at``)
``handover_s``    claimed → the worker process starts running it (``timings.handover_s``)
``complete_to_start_s``  ``completed_at`` → the worker process runs the job

The first study after start is reported on its own: worker processes start on
demand, so its job also waits for the first one to import torch and the modules.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import select

from ai.core.models import save_model_version
from dicomnode.storage.db import open_database
from dicomnode.storage.models import Job, Study

HERE = Path(__file__).resolve()
sys.path.append(str(HERE.parents[2]))  # tests/, after ai is imported (tests/ai must not shadow it)

from conftest import NodeProcess, free_port, storescu  # noqa: E402
from dicom_factory import make_dataset, uid, write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--sweep", type=float, default=1.0, help="routing.sweep_seconds")
    args = parser.parse_args()


    root = Path(tempfile.mkdtemp(prefix="dicomnode-latency-"))
    dist = root / "site" / "dicomnode_testmodules-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dicomnode-testmodules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dicomnode.modules]\necho = dicomnode_testmodules:EchoModule\n")
    save_model_version(root / "models" / "echo", "echo", torch.nn.Linear(2, 2), {"network": {}},
                       version="latency")
    (root / "rules.toml").write_text('[[rules]]\nname = "all"\nmodules = ["echo"]\n')
    node = NodeProcess(data_dir=root / "node", port=free_port(), config={
        "node": {"fsync": True},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 2,
                    "sweep_seconds": args.sweep, "rules_file": str(root / "rules.toml")},
        "jobs": {"workers": 1, "torch_threads": 1},
    }, env={"PYTHONPATH": f"{root / 'site'}:{HERE.parent}",
            "DICOMNODE_TESTMODULE_MODELS": str(root / "models")})
    node.data_dir.mkdir(parents=True)
    node.start()
    db = open_database(f"sqlite:///{node.data_dir / 'index.sqlite'}", fsync=False, upgrade=False)
    try:
        studies = []
        for i in range(args.n + 1):  # the first one only warms the node up
            study = uid()
            path = write(make_dataset(study_uid=study, rows=32, columns=32, seed=i),
                         root / "in" / f"{i}.dcm")
            assert storescu(node.port, path).returncode == 0
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with db.session() as s:
                    job = s.scalars(select(Job).where(Job.study_instance_uid == study)).first()
                if job is not None and job.state == "done":
                    break
                time.sleep(0.2)
            else:
                raise SystemExit(f"study {i} not done in time:\n{node.log()[-3000:]}")
            studies.append(study)
        rows = []
        quiet = 2.0
        with db.session() as s:
            for study in studies:
                st = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
                job = s.scalars(select(Job).where(Job.study_instance_uid == study)).one()
                quiet_end = st.last_series_added_at.timestamp() + quiet
                done = st.completed_at.timestamp()
                handover = float(job.timings["handover_s"])
                rows.append({
                    "detect_s": done - quiet_end,
                    "route_s": job.created_at.timestamp() - done,
                    "claim_s": job.started_at.timestamp() - job.created_at.timestamp(),
                    "handover_s": handover,
                    "complete_to_start_s": job.started_at.timestamp() + handover - done,
                })
        cold, warm = rows[0], rows[1:]
        summary = {k: {"median": round(statistics.median(r[k] for r in warm), 4),
                       "max": round(max(r[k] for r in warm), 4)} for k in warm[0]}
        print(json.dumps({"n": len(warm), "sweep_seconds": args.sweep, "latency": summary,
                          "first_study_after_start": {k: round(v, 4) for k, v in cold.items()}},
                         indent=2))
    finally:
        db.dispose()
        node.stop()


if __name__ == "__main__":
    main()
