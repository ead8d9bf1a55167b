"""The ``mtici`` AI module: dual-view mTICI grading after CVFSNet (Xu et al., MedIA 2025).

``select`` pairs the frontal and lateral DSA runs of a study (:mod:`ai.mtici.selection`),
``predict`` reads both lazily, resamples them as CVFSNet does and runs the fused
network; the finding carries the grade, the successful-reperfusion flag (≥ 2b) and
the class probabilities of the fused and of each view head.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
import torch
from PIL import Image, ImageDraw, ImageFont

from ai.core.contract import (
    AIModule,
    Case,
    Code,
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    RenderedImage,
    Selection,
    StudyView,
)
from ai.core.models import LoadedModel
from ai.mtici import labels as L
from ai.mtici.datasets import MticiSample, load_amticis, read_run_clip, sample_clips
from ai.mtici.dicomio import write_study
from ai.mtici.losses import MultiHeadLoss
from ai.mtici.metrics import grade_metrics
from ai.mtici.network import CVFSNet, NetworkConfig, build_network
from ai.mtici.selection import SelectionConfig, select_pair
from ai.mtici.synthetic import SyntheticCase, generate, rerender

#: The bundled model's clip: 8 frames like the method, 32² so that CPU training fits.
BUNDLED_CLIP = (8, 32, 32)
#: Matrix of the runs ``dicomnode synth mtici`` writes: CVFSNet's input size (8×256×256).
DICOM_SIZE = 256
_MODE_OF_WIDTH = {4: "4class", 5: "5class", 2: "binary"}

logger = logging.getLogger(__name__)


class MticiModule(AIModule):
    """Dual-view mTICI reperfusion grade from a frontal and a lateral DSA run.

    Parameters
    ----------
    selection : SelectionConfig or mapping, optional
        How runs are paired (``pick``, ``pair_window_s``, ``skip_unsuitable`` …).
    """

    name: ClassVar[str] = "mtici"
    title: ClassVar[str] = "mTICI reperfusion grade (CVFSNet, dual view)"
    level: ClassVar[str] = "study"
    depends_on: ClassVar[tuple[str, ...]] = ("quality",)
    codes: ClassVar[tuple[Code, ...]] = (L.MTICI, L.SUCCESSFUL_REPERFUSION)

    def __init__(self, selection: SelectionConfig | Mapping[str, Any] | None = None) -> None:
        self._loss: MultiHeadLoss | None = None
        if selection is None or isinstance(selection, SelectionConfig):
            self.selection = selection or SelectionConfig()
        else:
            self.selection = SelectionConfig(**dict(selection))

    # -- contract -------------------------------------------------------------
    def select(
        self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
    ) -> Selection:
        """The latest frontal + lateral pair, or no case and why (see :mod:`ai.mtici.selection`)."""
        selection = select_pair(study, self.selection, prior)
        if not selection.cases:
            logger.info("study %s: %s", study.study_instance_uid, selection.reason)
        return selection

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        """Grade one pair: both runs read lazily, resampled, z-scored, one forward pass."""
        network: CVFSNet = model.network  # type: ignore[assignment]
        clip = tuple(int(v) for v in model.config["preprocessing"]["clip"])
        mode = str(model.config["preprocessing"].get("label_mode", "4class"))
        frontal_inst, lateral_inst = case.inputs
        device = next(network.parameters()).device
        frontal = torch.from_numpy(read_run_clip(Path(frontal_inst.path), clip))[None].to(device)
        lateral = torch.from_numpy(read_run_clip(Path(lateral_inst.path), clip))[None].to(device)
        with torch.inference_mode():
            logits = network.eval()(frontal, lateral)
        probs = {k: logits[k].softmax(dim=1)[0].cpu().numpy() for k in ("fused", "frontal", "lateral")}
        return findings_from_probabilities(case, probs, mode, model.version, model.sha256,
                                           network.fusion.angle_degrees())

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        """The peak-opacification frame of each view with the grade burned in (RGB)."""
        grade = findings.extra.get("grade", "?")
        confidence = findings.findings[0].confidence if findings.findings else None
        images = []
        for inst, view in zip(case.inputs, ("AP", "LAT"), strict=True):
            ds = pydicom.dcmread(inst.path)
            frames = ds.pixel_array
            frames = frames.reshape((-1,) + frames.shape[-2:]) if frames.ndim >= 3 else frames[None]
            # Contrast is dark in MONOCHROME2 DSA: the peak frame has the lowest mean.
            means = frames.reshape(len(frames), -1).mean(axis=1)
            inverted = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
            peak = int(np.argmax(means) if inverted else np.argmin(means))
            text = f"mTICI {grade}" + (f" ({confidence:.0%})" if confidence is not None else "")
            pixels = _burn_in(frames[peak], [text, f"{view} frame {peak + 1}", "NOT FOR DIAGNOSIS"], inverted)
            images.append(RenderedImage(
                pixels=pixels,
                caption=f"{view} peak frame {peak + 1}: {text}",
                source=ImageReference(inst.sop_instance_uid, inst.sop_class_uid, (peak + 1,)),
            ))
        return images

    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """The CVFSNet of ``config`` (a model's ``network`` section or its whole metadata)."""
        return build_network(config.get("network", config))

    def synthetic(self, n: int, seed: int) -> Sequence[SyntheticCase]:
        """``n`` synthetic pairs with exact grades (:mod:`ai.mtici.synthetic`)."""
        return generate(n, seed)

    def load(self, path: Path) -> Sequence[Any]:
        """AmTICIS pairs under ``path`` (:func:`ai.mtici.datasets.load_amticis`)."""
        return load_amticis(Path(path))

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        """The method's metrics from :meth:`decode` outputs or :class:`Findings`, and grades.

        ``truth`` items are grade strings (:meth:`truth`) or samples with a ``grade``.
        """
        heads: dict[str, list[np.ndarray]] = {"fused": [], "frontal": [], "lateral": []}
        for pred in predictions:
            if isinstance(pred, Findings):
                names = L.CLASS_NAMES[str(pred.extra["label_mode"])]
                pred = {h: np.array([pred.extra["probabilities" + ("" if h == "fused" else f"_{h}")][c]
                                     for c in names]) for h in heads}
            for head in heads:
                heads[head].append(np.asarray(pred[head]))
        mode = _MODE_OF_WIDTH[len(heads["fused"][0])]
        labels = np.array([L.class_index(getattr(t, "grade", t), mode) for t in truth])
        return grade_metrics({k: np.stack(v) for k, v in heads.items()}, labels, mode)

    # -- training and evaluation hooks (train/loop.py, train/evaluate.py) -------
    def default_config(self) -> dict[str, Any]:
        """Network, preprocessing and training config of the bundled model's recipe."""
        return {
            "network": NetworkConfig(clip=BUNDLED_CLIP).to_dict(),
            "preprocessing": {"clip": list(BUNDLED_CLIP), "label_mode": "4class"},
            "training": {"epochs": 8, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.01,
                         "cache_rate": 1.0, "train_n": 2400, "val_n": 300},
        }

    def transform(self, config: Mapping[str, Any], *, train: bool) -> Any:
        """Sample → ``{"frontal", "lateral"}`` (1, T, H, W) float tensors and ``"label"``.

        No augmentation: the generator's randomness (anatomy, timing, gains, noise,
        misregistration) already varies every case, and flips would swap anatomy.
        """
        clip = tuple(int(v) for v in config["preprocessing"]["clip"])
        mode = str(config["preprocessing"].get("label_mode", "4class"))

        def prepare(sample: Any) -> dict[str, Any]:
            if isinstance(sample, SyntheticCase):
                sample = MticiSample(sample.case_id, sample.grade, sample.frontal, sample.lateral)
            frontal, lateral = sample_clips(sample, clip)
            return {"frontal": torch.from_numpy(frontal), "lateral": torch.from_numpy(lateral),
                    "label": sample.label(mode)}

        return prepare

    def forward(self, network: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Logits of every head for a collated batch."""
        return network(batch["frontal"], batch["lateral"])

    def loss(self, outputs: Any, batch: Mapping[str, Any], config: Mapping[str, Any]) -> torch.Tensor:
        """CVFSNet's multi-head label-smoothing CE + seesaw (:mod:`ai.mtici.losses`)."""
        target = torch.as_tensor(batch["label"]).long().to(outputs["fused"].device)
        n = outputs["fused"].shape[1]
        if self._loss is None or self._loss.seesaw.counts.numel() != n:
            self._loss = MultiHeadLoss(n)
        self._loss.to(target.device)
        return self._loss(outputs, target)

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[Any]:
        """Per sample: probabilities of the fused and of each view head."""
        probs = {k: outputs[k].softmax(dim=1).cpu().numpy() for k in ("fused", "frontal", "lateral")}
        return [{k: v[i] for k, v in probs.items()} for i in range(len(probs["fused"]))]

    def truth(self, sample: Any) -> str:
        """The grade of a sample."""
        return str(sample.grade)

    def write_dicom(self, samples: Sequence[Any], out_dir: Path) -> list[Path]:
        """Each synthetic pair as one XA study (frontal + lateral run) under ``out_dir``.

        Generated cases are drawn again at :data:`DICOM_SIZE`² (same head, grade and
        timing as the 64² training draw): the runs a PACS sends are not 64² thumbnails,
        and the quality gate the node runs first rates what it was trained on.
        """
        paths: list[Path] = []
        for sample in samples:
            if isinstance(sample, SyntheticCase) and "seed" in sample.info \
                    and sample.frontal.shape[-1] < DICOM_SIZE:
                sample = rerender(sample, DICOM_SIZE)
            paths.extend(write_study(sample, Path(out_dir) / sample.case_id))
        return paths


def findings_from_probabilities(
    case: Case,
    probs: Mapping[str, np.ndarray],
    mode: str,
    version: str,
    sha256: str,
    fusion_angle_deg: float | None = None,
) -> Findings:
    """The module's :class:`Findings` from the fused and view-head probabilities."""
    names = L.CLASS_NAMES[mode]
    fused = probs["fused"]
    best = int(np.argmax(fused))
    grade = names[best]
    p_good = float(fused[list(L.successful_classes(mode))].sum())
    successful = p_good >= 0.5
    refs = tuple(ImageReference(i.sop_instance_uid, i.sop_class_uid) for i in case.inputs)
    confidence = float(fused[best])
    p_flag = p_good if successful else 1.0 - p_good
    flag = "yes" if successful else "no"
    findings = []
    if mode != "binary":  # the binary head says only what the second finding says
        findings.append(Finding(
            tracking_id=f"mTICI {grade} ({confidence:.0%})",
            finding=L.MTICI,
            references=refs,
            evaluations=(Evaluation(L.MTICI, L.grade_code(grade), confidence),),
            confidence=confidence,
            finding_site=L.CEREBRAL_ARTERY,
        ))
    findings.append(Finding(
        tracking_id=f"Successful reperfusion: {flag} ({p_flag:.0%})",
        finding=L.SUCCESSFUL_REPERFUSION,
        references=refs,
        evaluations=(Evaluation(L.SUCCESSFUL_REPERFUSION, L.YES if successful else L.NO, p_flag),),
        confidence=p_flag,
        finding_site=L.CEREBRAL_ARTERY,
    ))
    extra: dict[str, Any] = {
        "grade": grade,
        "label_mode": mode,
        "successful_reperfusion": successful,
        "p_successful_reperfusion": round(p_good, 6),
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, fused, strict=True)},
        "probabilities_frontal": {n: round(float(p), 6) for n, p in zip(names, probs["frontal"], strict=True)},
        "probabilities_lateral": {n: round(float(p), 6) for n, p in zip(names, probs["lateral"], strict=True)},
        "frontal_sop_instance_uid": case.inputs[0].sop_instance_uid,
        "lateral_sop_instance_uid": case.inputs[1].sop_instance_uid,
    }
    if fusion_angle_deg is not None:
        extra["fusion_angle_deg"] = round(fusion_angle_deg, 2)
    return Findings(
        module="mtici",
        model_version=version,
        model_sha256=sha256,
        findings=tuple(findings),
        summary=f"mTICI {grade} ({confidence:.0%}); successful reperfusion (>= 2b): "
                f"{'yes' if successful else 'no'} ({p_good:.0%})",
        extra=extra,
    )


def _burn_in(frame: np.ndarray, lines: Sequence[str], inverted: bool) -> np.ndarray:
    """Windowed frame as RGB, upscaled to ≥ 512 px, with ``lines`` printed top-left."""
    lo, hi = np.percentile(frame, (1, 99.5))
    grey = np.clip((frame.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    if inverted:
        grey = 1.0 - grey
    image = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
    scale = max(1, int(np.ceil(512 / max(image.size))))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(14, image.height // 24))
    y: float = 6
    for line in lines:
        box = draw.textbbox((8, y), line, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((8, y), line, fill=(255, 255, 0), font=font)
        y = box[3] + 6
    return np.asarray(image, dtype=np.uint8)
