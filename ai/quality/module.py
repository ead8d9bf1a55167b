"""``QualityModule``: CLAIRE-DSA-style image properties of one DSA run.

select
    Every subtracted multi-frame XA run of the study (one case per run).
predict
    Streaming MinIP → pad, resize, scale → :class:`~ai.quality.network.QualityNet`
    → per label the class and its probability: one TID 1501 finding per label
    (results-notes §4.2) and ``gate = {"suitable": …}`` for dependent modules.
render
    The MinIP with the predicted labels printed beside it (RGB).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.core.contract import (
    AIModule,
    Case,
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    InstanceView,
    RenderedImage,
    Selection,
    SeriesView,
    StudyView,
)
from ai.core.models import LoadedModel
from ai.quality import labels as lab
from ai.quality.datasets import QualitySample, load_csv
from ai.quality.metrics import label_metrics
from ai.quality.network import build_network
from ai.quality.render import render_minip_with_labels
from ai.quality.synthetic import draw_params
from ai.quality.transforms import minip_from_file, preprocess_config

logger = logging.getLogger(__name__)

#: SOP classes of angiographic runs (X-Ray Angiographic, Enhanced XA).
XA_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1")
#: Synthetic runs written for people (``dicomnode synth``) use at least this matrix.
DICOM_MIN_SIZE = 512


def is_subtracted(series: SeriesView, instance: InstanceView) -> bool:
    """Whether a run is a DSA (subtracted) run.

    Vendors say so in different places: an Image Type value containing ``SUBTR``
    (``SUBTRACTION``, ``SUBTRACTED``) or ``DSA``; Recommended Viewing Mode ``SUB``
    (PS3.3 C.7.6.10: the viewer subtracts the mask); or, when Image Type is empty,
    "DSA"/"SUB" in the series description.
    """
    image_type = [str(v).upper() for v in (instance.attributes.get("ImageType") or
                                           series.image_type or ())]
    if any("SUBTR" in v or v == "DSA" for v in image_type):
        return True
    if str(instance.attributes.get("RecommendedViewingMode", "")).upper() == "SUB":
        return True
    if not image_type:
        desc = series.series_description.upper()
        return "DSA" in desc.split() or "SUB" in desc.split()
    return False


class QualityModule(AIModule):
    """DSA image quality (CLAIRE-DSA): one classifier head per image property."""

    name = "quality"
    title = "DSA image quality (CLAIRE-DSA)"
    level = "series"

    # -- the node's path ---------------------------------------------------------
    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        cases = []
        for series in study.series:
            if series.modality.upper() != "XA":
                continue
            for inst in series.instances:
                if (inst.sop_class_uid in XA_SOP_CLASSES and inst.number_of_frames > 1
                        and is_subtracted(series, inst)):
                    cases.append(Case(module=self.name, study_instance_uid=study.study_instance_uid,
                                      inputs=(inst,), series=(series,)))
        if not cases:
            return Selection(cases=(), reason="no subtracted multi-frame XA run (DSA) in the study")
        return Selection(cases=tuple(cases))

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        inst = case.inputs[0]
        minip, _ = minip_from_file(inst.path)
        x = preprocess_config(model.config)(minip)[None].to(model.device)
        with torch.inference_mode():
            out = model.network(x)
        probs = {name: torch.softmax(logits[0].float(), 0).cpu().numpy()
                 for name, logits in out.items()}
        return self.findings_from_probabilities(probs, model, inst)

    def findings_from_probabilities(self, probs: Mapping[str, np.ndarray], model: LoadedModel,
                                    inst: InstanceView) -> Findings:
        """Findings (one per label), gate and summary from per-label class probabilities."""
        ref = ImageReference(sop_instance_uid=inst.sop_instance_uid,
                             sop_class_uid=inst.sop_class_uid)
        findings, classes, table = [], {}, {}
        for name, class_names in lab.schema_from_config(model.config):
            p = probs[name]
            k = int(np.argmax(p))
            cls, conf = class_names[k], float(p[k])
            codes = lab.codes_for(name, class_names)
            classes[name] = cls
            table[name] = {c: round(float(v), 4) for c, v in zip(class_names, p, strict=True)}
            findings.append(Finding(
                tracking_id=f"{name}: {cls} ({conf:.0%})",
                finding=codes.concept,
                references=(ref,),
                evaluations=(Evaluation(concept=codes.concept, value=codes.value(cls),
                                        confidence=conf),),
                confidence=conf,
                finding_site=codes.finding_site,
            ))
        gate_cfg = model.config.get("gate", {})
        gate_label = gate_cfg.get("label", lab.GATE_LABEL)
        gate = {}
        if gate_label in classes:
            gate = {"suitable": classes[gate_label] == gate_cfg.get("class", lab.GATE_CLASS)}
        summary = ", ".join(f"{n} {c}" for n, c in classes.items())
        return Findings(module=self.name, model_version=model.version, model_sha256=model.sha256,
                        findings=tuple(findings), summary=summary, gate=gate,
                        extra={"classes": classes, "probabilities": table})

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        inst = case.inputs[0]
        minip, header = minip_from_file(inst.path)
        bits = int(header.get("BitsStored", 8 * minip.dtype.itemsize))
        pixels = render_minip_with_labels(minip, findings, bits)
        caption = f"MinIP with {self.title} labels"
        return [RenderedImage(pixels=pixels, caption=caption, source=ImageReference(
            sop_instance_uid=inst.sop_instance_uid, sop_class_uid=inst.sop_class_uid))]

    # -- network and data --------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        return {
            "labels": lab.default_schema(),
            "gate": {"label": lab.GATE_LABEL, "class": lab.GATE_CLASS},
            "network": {"arch": "monai.networks.nets.ResNet basic, shared trunk, one head/label",
                        "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                        "dropout": 0.1},
            "preprocessing": {"projection": "MinIP (pixel-wise minimum over all frames)",
                              "pad": "square, median value", "resize": "area",
                              "size": 128,
                              "scale": "x / (background percentile * headroom), clip [0, 1]",
                              "background_percentile": 98.0, "headroom": 1.5},
            # Runs are rendered at the network's input size: geometry, line widths, text
            # and noise grain are in field units, so a 1024² run resized to 128² looks
            # alike (checked in tests), and rendering is 4× cheaper than at 256².
            "training": {"epochs": 22, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4,
                         "cache_rate": 1.0, "train_n": 2500, "val_n": 400,
                         "render_size": 128},
        }

    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        return build_network(config, lab.schema_from_config(config))

    def synthetic(self, n: int, seed: int, size: int | None = None) -> list[QualitySample]:
        """``n`` runs rendered at ``size``² (default: ``training.render_size``)."""
        size = size or int(self.default_config()["training"]["render_size"])
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            run_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            params = draw_params(rng, run_seed)
            out.append(QualitySample(labels=dict(params.labels), params=params, size=size,
                                     info={"source": f"synthetic seed {seed} #{i}"}))
        return out

    def benchmark_samples(self, n: int, seed: int) -> list[QualitySample]:
        """Runs at the timing target's size: 1024×1024, 60 frames."""
        return [QualitySample(labels=s.labels, params=s.params, size=1024, frames=60)
                for s in self.synthetic(n, seed)]

    def load(self, path: Path) -> list[QualitySample]:
        return load_csv(path)

    def transform(self, config: Mapping[str, Any], *, train: bool) -> Any:
        schema = lab.schema_from_config(config)
        pre = preprocess_config(config)

        # The synthetic generator already varies every nuisance; no augmentation, so
        # the default CacheDataset can cache each preprocessed MinIP once.
        def fn(sample: QualitySample) -> dict[str, Any]:
            target = torch.tensor(_indices(sample.labels, schema), dtype=torch.long)
            return {"image": pre(sample.minip()), "labels": target}

        return fn

    def loss(self, outputs: Any, batch: Mapping[str, Any], config: Mapping[str, Any]
             ) -> torch.Tensor:
        target = batch["labels"]
        total = torch.zeros((), device=target.device)
        for j, (name, _) in enumerate(lab.schema_from_config(config)):
            y = target[:, j]
            if bool((y >= 0).any()):  # unrated in the whole batch: no term (CE would be nan)
                total = total + torch.nn.functional.cross_entropy(outputs[name], y,
                                                                  ignore_index=-1)
        return total

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[Any]:
        """Per sample: label → {class name: probability} (class order of the schema)."""
        schema = lab.schema_from_config(config)
        probs = {name: torch.softmax(outputs[name].detach().float(), 1).cpu().numpy()
                 for name, _ in schema}
        n = next(iter(probs.values())).shape[0]
        return [{name: dict(zip(classes, map(float, probs[name][i]), strict=True))
                 for name, classes in schema} for i in range(n)]

    def truth(self, sample: QualitySample) -> dict[str, str]:
        return dict(sample.labels)

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        return label_metrics(predictions, truth)

    # -- synthetic DICOM ---------------------------------------------------------
    def write_dicom(self, samples: Sequence[Any], out_dir: Path) -> list[Path]:
        """One study per run (XA multi-frame files) plus a ``labels.csv`` of the truth."""
        from pydicom.uid import generate_uid

        from ai.quality.dicomio import write_run, xa_dataset

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths, rows = [], []
        base = dt.datetime(2026, 1, 5, 8, 0, 0)
        for i, sample in enumerate(samples):
            if sample.params is None:
                raise ValueError("only synthetic samples can be written as DICOM")
            size = max(sample.size, DICOM_MIN_SIZE)
            frames = QualitySample(sample.labels, sample.params, size=size,
                                   frames=sample.frames).run()
            ds = xa_dataset(sample.params, frames, patient_id=f"SYNQ{sample.params.seed % 10**8:08d}",
                            study_uid=generate_uid(), series_uid=generate_uid(), series_number=1,
                            when=base + dt.timedelta(minutes=7 * i))
            path = write_run(out_dir / f"run{i:04d}.dcm", ds)
            paths.append(path)
            rows.append([path.name] + [sample.labels[n] for n, _ in lab.DEFAULT_LABELS])
        with open(out_dir / "labels.csv", "w") as fh:
            fh.write(",".join(["path"] + [n for n, _ in lab.DEFAULT_LABELS]) + "\n")
            fh.writelines(",".join(r) + "\n" for r in rows)
        return paths


def _indices(labels: Mapping[str, str], schema: Sequence[tuple[str, Sequence[str]]]
             ) -> list[int]:
    out = []
    for name, classes in schema:
        value = labels.get(name)
        if value is None:
            out.append(-1)
        elif value in classes:
            out.append(list(classes).index(value))
        else:
            raise ValueError(f"label {name}: unknown class {value!r} (known: {', '.join(classes)})")
    return out
