"""Evaluation: the module's metrics on samples, and inference time on real DICOM files.

:func:`evaluate` runs :meth:`~ai.core.contract.AIModule.infer` over the samples and
compares with :meth:`~ai.core.contract.AIModule.truth` through the module's
:meth:`~ai.core.contract.AIModule.metrics`.  ``inference_s_per_case`` is measured
on the node's own path: benchmark samples are written as DICOM files
(:meth:`~ai.core.contract.AIModule.write_dicom`), grouped into study views, and
each case is timed through :meth:`~ai.core.contract.AIModule.predict`, file reading
and preprocessing included.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ai.core.contract import AIModule, Case
from ai.core.dicomio import study_views_from_files
from ai.core.models import LoadedModel

logger = logging.getLogger(__name__)


def evaluate(
    module: AIModule, model: LoadedModel, samples: Sequence[Any], *, timing_n: int = 0,
    seed: int = 0, batch_size: int = 16,
) -> dict[str, Any]:
    """The module's metrics on ``samples`` (plus ``inference_s_per_case`` if ``timing_n``)."""
    model.network.eval()
    predictions = module.infer(model, samples, batch_size=batch_size)
    truth = [module.truth(s) for s in samples]
    metrics = module.metrics(predictions, truth)
    if timing_n > 0:
        metrics["inference_s_per_case"] = time_inference(module, model, timing_n, seed)
    return metrics


def cases_from_files(module: AIModule, paths: Sequence[Path]) -> list[Case]:
    """Every case :meth:`~AIModule.select` picks from the studies the files form."""
    cases: list[Case] = []
    for view in study_views_from_files(paths):
        selection = module.select(view, {})
        cases.extend(selection.cases)
    return cases


def time_inference(module: AIModule, model: LoadedModel, n: int, seed: int) -> float:
    """Mean seconds per case of :meth:`~AIModule.predict` on ``n`` benchmark cases.

    One warm-up prediction runs first (a node's worker keeps its model loaded, so
    one-off allocation costs are not per case).  Files are freshly written, so reads
    come from the page cache, as they do for a study just received.
    """
    samples = module.benchmark_samples(n, seed)
    with tempfile.TemporaryDirectory(prefix=f"dicomnode-bench-{module.name}-") as tmp:
        paths = module.write_dicom(samples, Path(tmp))
        cases = cases_from_files(module, paths)
        if not cases:
            raise RuntimeError(f"{module.name}: select() picked nothing from its own benchmark data")
        with torch.inference_mode():
            module.predict(cases[0], model)
            times = []
            for case in cases:
                t0 = time.perf_counter()
                module.predict(case, model)
                times.append(time.perf_counter() - t0)
    logger.info("%s inference: %s s per case", module.name, [round(t, 3) for t in times])
    return round(statistics.mean(times), 4)
