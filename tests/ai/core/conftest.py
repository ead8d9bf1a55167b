"""A toy module for toolkit tests: is the bright square left or right?"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ai.core.contract import AIModule, Case, Findings, RenderedImage, Selection, StudyView
from ai.core.models import LoadedModel


class ToyModule(AIModule):
    name = "toy"
    title = "Toy left/right"

    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        return Selection(cases=(), reason="toy")

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        return Findings(module=self.name, model_version=model.version,
                        model_sha256=model.sha256, findings=())

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        return []

    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        from monai.networks.nets import ResNet

        return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 8, 8],
                      spatial_dims=2, n_input_channels=1, num_classes=2)

    def default_config(self) -> dict[str, Any]:
        return {"network": {}, "training": {"epochs": 3, "batch_size": 8, "lr": 3e-3}}

    def synthetic(self, n: int, seed: int) -> Sequence[Any]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            label = int(rng.integers(2))
            img = rng.normal(0, 0.2, (16, 16)).astype(np.float32)
            x = int(rng.integers(0, 5)) + (9 if label else 0)
            y = int(rng.integers(0, 12))
            img[y:y + 4, x:x + 3] += 1.0
            out.append({"image": img, "label": label})
        return out

    def load(self, path: Path) -> Sequence[Any]:
        raise NotImplementedError

    def transform(self, config: Mapping[str, Any], *, train: bool) -> Any:
        def fn(s: dict[str, Any]) -> dict[str, Any]:
            return {"image": torch.from_numpy(s["image"])[None], "label": s["label"]}

        return fn

    def loss(self, outputs: Any, batch: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
        return torch.nn.functional.cross_entropy(outputs, batch["label"])

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[Any]:
        return torch.softmax(outputs, 1)[:, 1].tolist()

    def truth(self, sample: Any) -> Any:
        return sample["label"]

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        from sklearn.metrics import roc_auc_score

        return {"auc": float(roc_auc_score(truth, predictions))}


@pytest.fixture
def toy() -> ToyModule:
    """A tiny module whose task (left or right?) trains in seconds."""
    # One thread: on a shared 2-core runner OpenMP spinning makes 2 threads far slower.
    torch.set_num_threads(1)
    return ToyModule()
