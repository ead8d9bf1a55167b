"""The scale-out tests' AI module: ``sleepy`` sleeps as long as its series description says.

A series described ``sleepy 0.2`` spends 0.2 s in predict, then rates the image with
the job tests' tiny network (``tests/jobs/support``'s ``echo``), so every job goes the
whole way: select → load_model → predict → render → SR + SC → index → outbox.  Each
predict appends ``start``/``end`` lines (worker pid, its node's pid, study UID, time)
to ``$DICOMNODE_TESTMODULE_MARKS``: which node ran which study, and how often.
"""
from __future__ import annotations

import os
import time

from dicomnode_testmodules import EchoModule

from ai.core.contract import Case, Findings
from ai.core.models import LoadedModel


def _mark(what: str, case: Case) -> None:
    path = os.environ.get("DICOMNODE_TESTMODULE_MARKS")
    if path:
        # O_APPEND: both nodes' worker processes append to one file, line by line.
        with open(path, "a") as fh:
            fh.write(f"{what} {os.getpid()} {os.getppid()} {case.study_instance_uid} {time.time():.3f}\n")


class SleepyModule(EchoModule):
    """``echo`` after sleeping the seconds named in the series description."""

    name = "sleepy"
    title = "Test module: sleepy"

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        words = (case.series[0].series_description if case.series else "").split()
        seconds = float(words[1]) if len(words) > 1 else 0.2
        _mark("start", case)
        time.sleep(seconds)
        findings = self._run(case, model)
        _mark("end", case)
        return findings


ENTRY_POINTS = {"sleepy": "dicomnode_scaleout:SleepyModule"}
