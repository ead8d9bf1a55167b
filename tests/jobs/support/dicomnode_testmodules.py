"""AI modules that exist only for the job tests: fast, slow, raising, memory-hungry, killed.

They reach the node the way a site's own module does — through the
``dicomnode.modules`` entry-point group — but from a ``*.dist-info`` directory that
the test fixture writes into a temporary directory and puts on the node's
``PYTHONPATH`` (see ``tests/jobs/conftest.py``).  Nothing in the node knows them,
and nothing a peer sends can make the node load them: without that ``PYTHONPATH``
they do not exist.

Each module runs a real (tiny) network from a real model version directory
(``weights.safetensors`` + ``metadata.json``, made by the fixture), so the whole job
path is exercised: select → load_model → predict → render → SR/SC → index.

Environment (set by the fixture):

``DICOMNODE_TESTMODULE_MODELS``  directory holding ``<module>/`` model versions
``DICOMNODE_TESTMODULE_MARKS``   file each predict appends ``start``/``end`` lines to
``DICOMNODE_TESTMODULE_SLEEP``   seconds the ``slow`` module spends in predict
"""
from __future__ import annotations

import dataclasses
import os
import resource
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.core import codes
from ai.core.contract import (
    AIModule,
    Case,
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    RenderedImage,
    Selection,
    StudyView,
)
from ai.core.models import LoadedModel


def _mark(what: str, case: Case) -> None:
    path = os.environ.get("DICOMNODE_TESTMODULE_MARKS")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{what} {os.getpid()} {case.module} {case.inputs[0].sop_instance_uid} "
                     f"{time.time():.3f}\n")
            fh.flush()
            os.fsync(fh.fileno())


class EchoModule(AIModule):
    """Rates each series' first image with a 2-input linear layer: one finding, one SC."""

    name = "echo"
    title = "Test module: echo"
    level = "series"

    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        cases = tuple(Case(self.name, study.study_instance_uid, s.instances[:1], (s,))
                      for s in study.series if s.instances)
        return Selection(cases, "" if cases else "no series with instances")

    def _run(self, case: Case, model: LoadedModel) -> Findings:
        import pydicom

        ds = pydicom.dcmread(case.inputs[0].path)
        pixels = ds.pixel_array.astype(np.float32)
        x = torch.tensor([[float(pixels.mean()) / 4096.0, float(pixels.std()) / 4096.0]])
        with torch.inference_mode():
            p = float(torch.softmax(model.network(x), dim=1)[0, 1])
        ref = ImageReference(case.inputs[0].sop_instance_uid, case.inputs[0].sop_class_uid)
        good = p >= 0.5
        return Findings(
            module=self.name, model_version=model.version, model_sha256=model.sha256,
            findings=(Finding(
                tracking_id=f"{self.name}: {'diagnostic' if good else 'limited'}",
                finding=codes.IMAGE_QUALITY, references=(ref,),
                evaluations=(Evaluation(codes.IMAGE_QUALITY,
                                        codes.DIAGNOSTIC_QUALITY if good else codes.LIMITED_QUALITY,
                                        round(max(p, 1 - p), 4)),),
                confidence=round(max(p, 1 - p), 4)),),
            summary=f"{self.name}: p={p:.3f}", gate={"suitable": good},
        )

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        _mark("start", case)
        findings = self._run(case, model)
        _mark("end", case)
        return findings

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        image = np.zeros((32, 48, 3), np.uint8)
        image[8:24, 8:40] = (255, 200, 0)
        ref = ImageReference(case.inputs[0].sop_instance_uid, case.inputs[0].sop_class_uid)
        return [RenderedImage(image, findings.summary, ref)]

    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    def bundled_model_path(self) -> Path:
        return Path(os.environ.get("DICOMNODE_TESTMODULE_MODELS", "/nonexistent")) / self.name

    def synthetic(self, n: int, seed: int) -> Sequence[Any]:
        raise NotImplementedError("test module: no synthetic data")

    def load(self, path: Path) -> Sequence[Any]:
        raise NotImplementedError("test module: no data format")

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        raise NotImplementedError("test module: no metrics")


class SlowModule(EchoModule):
    """Like echo, but spends ``DICOMNODE_TESTMODULE_SLEEP`` seconds in predict."""

    name = "slow"
    title = "Test module: slow"

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        _mark("start", case)
        time.sleep(float(os.environ.get("DICOMNODE_TESTMODULE_SLEEP", "4")))
        findings = self._run(case, model)
        _mark("end", case)
        return findings


class RaisingModule(EchoModule):
    """predict raises, as a module with a bug does."""

    name = "raising"
    title = "Test module: raises"

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        _mark("start", case)
        raise RuntimeError("deliberate failure of the raising test module")


class HogModule(EchoModule):
    """predict allocates memory until none is left (under a 512 MiB address-space limit).

    The limit keeps the test from starving the machine; inside it the module meets
    exactly what a model exhausting memory meets: an allocation that fails.
    """

    name = "hog"
    title = "Test module: exhausts memory"

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        _mark("start", case)
        with open("/proc/self/statm") as fh:
            used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = used + (512 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hoard = []
        while True:  # until numpy cannot allocate any more (empty: the limit is on address
            hoard.append(np.empty(16 << 20, np.uint8))  # space, touching pages only costs time)


class KilledModule(EchoModule):
    """predict dies by SIGKILL, as a worker the kernel's OOM killer picks does."""

    name = "killed"
    title = "Test module: killed by a signal"

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        _mark("start", case)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class PickyModule(EchoModule):
    """Selects nothing, with a reason (as mtici does without a lateral run)."""

    name = "picky"
    title = "Test module: selects nothing"

    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        return Selection((), f"none of the {len(study.series)} series is to this module's taste")


class AfterModule(EchoModule):
    """A study-level module that depends on ``echo`` and records what ``prior`` held."""

    name = "after"
    title = "Test module: depends on echo"
    level = "study"
    depends_on = ("echo",)

    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        seen = len((prior or {}).get("echo", ()))
        if not seen:
            return Selection((), "no echo findings in prior")
        series = study.series[0]
        return Selection((Case(self.name, study.study_instance_uid, series.instances[:1], (series,),
                               info={"prior_echo": seen}),))

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        findings = super().predict(case, model)
        return dataclasses.replace(findings, extra={"prior_echo": case.info["prior_echo"]})


#: Entry points the fixture declares (name = module:Class).
ENTRY_POINTS = {cls.name: f"dicomnode_testmodules:{cls.__name__}"
                for cls in (EchoModule, SlowModule, RaisingModule, HogModule, KilledModule,
                            PickyModule, AfterModule)}
