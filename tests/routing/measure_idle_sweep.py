"""Measure what one completion sweep costs when nothing is pending (not a test: prints a line).

    python tests/routing/measure_idle_sweep.py [--studies 5000]

Fills a fresh SQLite index with routed studies (4 series × 10 instances each), then
times :func:`dicomnode.routing.completion.sweep` 50 times; every run must be idle.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomnode.config import RoutingSettings
from dicomnode.routing.completion import sweep
from dicomnode.routing.rules import load_rules
from dicomnode.storage.db import open_database
from dicomnode.storage.models import Instance, Patient, Series, Study, utcnow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5000)
    args = parser.parse_args()
    db = open_database(f"sqlite:///{Path(tempfile.mkdtemp()) / 'index.sqlite'}", fsync=False)
    with db.write() as s:
        patient = Patient(patient_id="P")
        s.add(patient)
        s.flush()
        for i in range(args.studies):
            study = Study(study_instance_uid=f"1.2.{i}", patient_fk=patient.id, state="routed",
                          generation=1, routed_at=utcnow())
            s.add(study)
            s.flush()
            for j in range(4):
                series = Series(series_instance_uid=f"1.2.{i}.{j}", study_fk=study.id,
                                state="complete")
                s.add(series)
                s.flush()
                s.add_all(Instance(sop_instance_uid=f"1.2.{i}.{j}.{k}", series_fk=series.id,
                                   sop_class_uid="1.2", path="x", size=1, sha256="x")
                          for k in range(10))
    rules = load_rules(None)

    def enqueue(*_: Any) -> list[int]:
        raise AssertionError("nothing should be routed")

    times = []
    for _ in range(50):
        start = time.perf_counter()
        assert sweep(db, RoutingSettings(), rules, enqueue).idle
        times.append(time.perf_counter() - start)
    print(f"idle sweep, {args.studies} studies / {4 * args.studies} series / "
          f"{40 * args.studies} instances: median {statistics.median(times) * 1e3:.2f} ms, "
          f"max {max(times) * 1e3:.2f} ms")
    db.dispose()


if __name__ == "__main__":
    main()
