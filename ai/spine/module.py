"""The ``spine`` module: lumbar landmarks and grading after CCF-Net (ISBI 2022).

From an MR lumbar study it picks the sagittal T2 series (orientation normal |x| > 0.75,
"T2" in the description, else any sagittal), stacks the middle slice with its
neighbours, finds the 11 CCF-Net landmarks (L1–L5 bodies, T12-L1 … L5-S1 discs) with
their Tianchi grades, and reports each as a point on the middle slice (pixel and patient
coordinates) with its grade and probability.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai.core import codes
from ai.core.contract import (
    AIModule,
    Case,
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    InstanceView,
    Point,
    RenderedImage,
    Selection,
    SeriesView,
    StudyView,
)
from ai.spine.datasets import SpineSample, load_tianchi, read_slice
from ai.spine.geometry import PlaneValues, pixel_to_patient, plane_of, slice_positions
from ai.spine.labels import IDENTIFICATIONS, N_VERTEBRAE, is_disc, split_tag

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ai.core.models import LoadedModel
    from ai.spine.metrics import SpineTruth
    from ai.spine.transforms import SpinePrediction

# torch, MONAI and scikit-learn load on first use: the node imports every module to
# route studies, and select() needs none of them.

logger = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Anatomy code of each landmark, in landmark order.
ANATOMY = tuple({**codes.VERTEBRAE, **codes.DISCS}[ident] for ident in IDENTIFICATIONS)


# ---------------------------------------------------------------------------
# Series selection.
# ---------------------------------------------------------------------------


def _orientation(series: SeriesView) -> Sequence[float] | None:
    for inst in series.instances:
        iop = inst.attributes.get("ImageOrientationPatient")
        if iop is not None and len(iop) == 6:
            return [float(v) for v in iop]
    return None


def ordered_instances(series: SeriesView) -> list[InstanceView]:
    """Instances along the slice normal (InstanceNumber when positions are missing)."""
    iop = _orientation(series)
    insts = list(series.instances)
    try:
        if iop is None:
            raise ValueError("no orientation")
        keys = slice_positions([i.attributes["ImagePositionPatient"] for i in insts], iop)
        return [insts[k] for k in np.argsort(keys, kind="stable")]
    except (KeyError, ValueError, TypeError):
        return sorted(insts, key=lambda i: (i.instance_number or 0, i.sop_instance_uid))


def choose_series(study: StudyView) -> tuple[SeriesView | None, dict[str, str]]:
    """The sagittal T2 series of ``study`` (or another sagittal) and why others were not.

    Returns
    -------
    (SeriesView or None, dict)
        The chosen series, and series UID → reason for every series not chosen.
    """
    reasons: dict[str, str] = {}
    sagittal: list[SeriesView] = []
    for s in study.series:
        desc = s.series_description or "(no description)"
        if s.modality != "MR":
            reasons[s.series_instance_uid] = f"{desc}: modality {s.modality or '?'}, not MR"
            continue
        if any(i.number_of_frames > 1 for i in s.instances):
            reasons[s.series_instance_uid] = f"{desc}: multi-frame images are not supported"
            continue
        iop = _orientation(s)
        if iop is None:
            reasons[s.series_instance_uid] = f"{desc}: no ImageOrientationPatient"
            continue
        plane = plane_of(iop)
        if plane is not PlaneValues.SAGITTAL:
            reasons[s.series_instance_uid] = f"{desc}: {plane.value}, not sagittal"
            continue
        sagittal.append(s)
    if not sagittal:
        return None, reasons

    def rank(s: SeriesView) -> tuple[int, int, int]:
        d = s.series_description.upper()
        # T2 first (CCF-Net's choice); then sagittals not named T1 (STIR …); T1 last.
        weight = 0 if "T2" in d else (2 if "T1" in d else 1)
        return weight, -len(s.instances), s.series_number or 0

    sagittal.sort(key=rank)
    chosen = sagittal[0]
    for s in sagittal[1:]:
        reasons[s.series_instance_uid] = (
            f"{s.series_description or '(no description)'}: sagittal, but "
            f"{chosen.series_description or 'another series'} was preferred")
    return chosen, reasons


# ---------------------------------------------------------------------------
# The module.
# ---------------------------------------------------------------------------


class SpineModule(AIModule):
    """Lumbar landmarks and grading (CCF-Net) on sagittal T2 MR."""

    name = "spine"
    title = "Lumbar spine landmarks and grading (CCF-Net)"
    level = "study"

    # -- node side ----------------------------------------------------------
    def select(self, study: StudyView,
               prior: Mapping[str, Sequence[Findings]] | None = None) -> Selection:
        """The sagittal T2 series: middle slice ± one neighbour, or none with the reason."""
        chosen, reasons = choose_series(study)
        if chosen is None:
            why = "; ".join(reasons.values()) or "study has no series"
            return Selection(cases=(), reason=f"no sagittal MR series ({why})")
        insts = ordered_instances(chosen)
        key = len(insts) // 2
        picked = [insts[min(max(key + d, 0), len(insts) - 1)] for d in (-1, 0, 1)]
        case = Case(
            module=self.name, study_instance_uid=study.study_instance_uid,
            inputs=tuple(picked), series=(chosen,),
            info={"key_sop_instance_uid": picked[1].sop_instance_uid,
                  "key_index": key, "n_slices": len(insts),
                  "series_description": chosen.series_description, "ignored": reasons},
        )
        return Selection(cases=(case,))

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        """Read the three slices, run the network (flip TTA) and report 11 landmarks."""
        import pydicom
        import torch

        from ai.spine.network import flip_tta
        from ai.spine.transforms import decode, preprocess

        datasets = [pydicom.dcmread(i.path) for i in case.inputs]
        slices = np.stack([read_slice(ds) for ds in datasets])
        key_ds = datasets[1]
        img, factor = preprocess(slices, 1, model.config)
        x = torch.from_numpy(img)[None].to(model.device)
        inference = model.config.get("inference", {})
        # The network is small: on CPU a second intra-op thread costs more in
        # synchronisation than it gains (measured on the shared 2-core machine: 0.04 s
        # per study with 1 thread, 1.4 s with 2), so inference runs on `threads` (1).
        previous = torch.get_num_threads()
        torch.set_num_threads(int(inference.get("threads", 1)))
        try:
            with torch.inference_mode():
                tta = bool(inference.get("tta", True))
                out = flip_tta(model.network, x) if tta else model.network(x)
        finally:
            torch.set_num_threads(previous)
        pred = decode(out[0], factor, top_k=int(inference.get("top_k", 1)),
                      vote_threshold=float(inference.get("vote_threshold", 0.3)))
        return self.findings(pred, key_ds, case, model)

    def findings(self, pred: SpinePrediction, key_ds: Any, case: Case,
                 model: LoadedModel) -> Findings:
        """:class:`Findings` of a decoded prediction on the key slice ``key_ds``."""
        ref = ImageReference(sop_instance_uid=str(key_ds.SOPInstanceUID),
                             sop_class_uid=str(key_ds.SOPClassUID))
        spacing = [float(v) for v in key_ds.get("PixelSpacing", (1.0, 1.0))]
        ipp, iop = key_ds.get("ImagePositionPatient"), key_ds.get("ImageOrientationPatient")
        items: list[Finding] = []
        extra: list[dict[str, Any]] = []
        for i, ident in enumerate(IDENTIFICATIONS):
            col, row = (float(v) for v in pred.coords[i])
            patient = (pixel_to_patient(col, row, ipp, iop, spacing)
                       if ipp is not None and iop is not None else None)
            evals = grade_evaluations(i, pred)
            tag = pred.tags[i]
            conf = evals[0].confidence or 0.0
            items.append(Finding(
                tracking_id=f"{ident}: {evals[0].value.meaning} ({100 * conf:.0f} %)",
                finding=ANATOMY[i], references=(ref,), evaluations=tuple(evals),
                confidence=float(np.clip(pred.score[i], 0.0, 1.0)), finding_site=ANATOMY[i],
                point=Point(column=col, row=row, patient=patient),
            ))
            extra.append({"identification": ident, "column": round(col, 2), "row": round(row, 2),
                          "patient": [round(v, 2) for v in patient] if patient else None,
                          "tag": tag, "prob_abnormal": round(float(pred.prob_abnormal[i]), 4),
                          "heat": round(float(pred.score[i]), 4)})
        abnormal = [f"{e['identification']} {e['tag']}" for e in extra
                    if split_tag(e["tag"])[0] != "v1" or "v5" in e["tag"]]
        summary = (f"11 landmarks on {case.info.get('series_description', 'sagittal')}; "
                   + (f"abnormal: {', '.join(abnormal)}" if abnormal else "no abnormality"))
        return Findings(
            module=self.name, model_version=model.version, model_sha256=model.sha256,
            findings=tuple(items), summary=summary,
            extra={"landmarks": extra, "key_sop_instance_uid": ref.sop_instance_uid,
                   "series_instance_uid": str(key_ds.SeriesInstanceUID)},
        )

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        """The key slice with each landmark marked and labelled (RGB, ≥ 512 px)."""
        from ai.spine.render import draw_landmarks

        key = case.inputs[1]
        pixels = draw_landmarks(read_slice(key.path), findings)
        n_abn = sum(1 for f in findings.findings
                    if any(e.value.value not in ("VERT-V1", "DISC-V1") for e in f.evaluations))
        caption = (f"Lumbar landmarks and grades (CCF-Net, model {findings.model_version}): "
                   f"{n_abn} of {len(findings.findings)} abnormal")
        return [RenderedImage(pixels=pixels, caption=caption,
                              source=ImageReference(key.sop_instance_uid, key.sop_class_uid))]

    # -- model side ---------------------------------------------------------
    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """CCF-Net on a MONAI ResNet trunk (``ai.spine.network``)."""
        from ai.spine.network import build_network

        return build_network(config)

    def default_config(self) -> dict[str, Any]:
        """Network, preprocessing, augmentation, loss and training settings."""
        from ai.spine.losses import DEFAULT_LOSS
        from ai.spine.transforms import DEFAULT_PREPROCESSING

        return {
            # Small enough to train on 2 shared CPU cores in ~6 CPU-minutes.
            "network": {"in_channels": 3, "widths": [16, 32, 64], "layers": [1, 1, 1],
                        "mid": 64, "dilations": [1, 2, 4, 6], "pools": [2, 4, 8]},
            "preprocessing": dict(DEFAULT_PREPROCESSING),
            "augmentation": {"flip": 0.5, "affine_p": 0.8, "rotate_deg": 12.0, "scale": 0.1,
                             "shift": 0.05, "intensity_p": 0.8, "gamma": 0.3,
                             "contrast": 0.25, "bias": 0.3, "noise": 0.03,
                             "slice_jitter": True},
            "loss": dict(DEFAULT_LOSS),
            # top_k 4 heat-weighted votes (CCF-Net's decoder option), chosen on the
            # validation seed: 6 mm disc recall 0.988 → 0.994, mean error 2.15 → 1.80 mm.
            "inference": {"tta": True, "threads": 1, "top_k": 4, "vote_threshold": 0.3},
            "training": {"epochs": 20, "batch_size": 16, "lr": 3e-3, "weight_decay": 5e-4,
                         "cache_rate": 0, "train_n": 1500, "val_n": 150},
        }

    def synthetic(self, n: int, seed: int) -> list[SpineSample]:
        """``n`` synthetic sagittal T2 series (``ai.spine.synthetic``)."""
        from ai.spine.synthetic import synthetic_samples

        return synthetic_samples(n, seed)

    def load(self, path: Path) -> list[SpineSample]:
        """Samples from the Tianchi challenge layout (``ai.spine.datasets``)."""
        return load_tianchi(path)

    def transform(self, config: Mapping[str, Any], *, train: bool) -> Any:
        """Sample → {"image", "heat", "off_y", "off_x", "mask", "label", …}."""
        from ai.spine.transforms import SpineTransform

        return SpineTransform(config, train=train)

    def dataset(self, samples: Sequence[Any], config: Mapping[str, Any], *,
                train: bool) -> torch.utils.data.Dataset[Any]:
        """Samples normalised and resized once (uint8), augmented on every access."""
        from monai.data import Dataset

        from ai.spine.transforms import SpineTransform, prepare

        prepared = [prepare(s, config) for s in samples]
        return Dataset(data=prepared, transform=SpineTransform(config, train=train))

    def forward(self, network: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Maps (flip TTA when the network is in eval mode) plus the resize factors."""
        from ai.spine.network import flip_tta

        image = batch["image"]
        maps = network(image) if network.training else flip_tta(network, image)
        return {"maps": maps, "factor": batch["factor"]}

    def loss(self, outputs: Any, batch: Mapping[str, Any],
             config: Mapping[str, Any]) -> torch.Tensor:
        """CCF-Net's loss plus the disc-grade extension (``ai.spine.losses``)."""
        from ai.spine.losses import ccf_loss

        return ccf_loss(outputs["maps"], batch, config)[0]

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[SpinePrediction]:
        """Landmarks on each original slice (coarse cell + fine offset)."""
        from ai.spine.transforms import decode

        factors = outputs["factor"].detach().cpu().numpy()
        inference = config.get("inference", {})
        k, vote = int(inference.get("top_k", 1)), float(inference.get("vote_threshold", 0.3))
        return [decode(m, f, top_k=k, vote_threshold=vote)
                for m, f in zip(outputs["maps"], factors, strict=True)]

    def truth(self, sample: SpineSample) -> SpineTruth:
        """Landmarks, tags and spacing of a sample."""
        from ai.spine.metrics import SpineTruth

        return SpineTruth(coords=sample.coords, tags=sample.tags,
                          pixel_spacing=sample.pixel_spacing)

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        """6 mm recall, AUCs, score = mean(L) × mean(C), the challenge's 8 mm macro-F1."""
        from ai.spine.metrics import spine_metrics

        return spine_metrics(predictions, truth)

    def write_dicom(self, samples: Sequence[Any], out_dir: Path) -> list[Path]:
        """Synthetic studies in the Tianchi layout (T2 SAG + T1 SAG and axial decoys)."""
        from ai.spine.dicomio import write_tianchi

        return write_tianchi(samples, out_dir)


def grade_evaluations(i: int, pred: SpinePrediction) -> list[Evaluation]:
    """The grade of landmark ``i`` as coded evaluations with their probabilities.

    Vertebra: v2 with p(abnormal), or v1 with 1 − p.  Disc: v1 with 1 − p(abnormal), or
    its grade with p(abnormal) × p(grade | abnormal); v5 as a second evaluation with its
    own probability when flagged.
    """
    p = float(pred.prob_abnormal[i])
    tags = split_tag(pred.tags[i])
    if not is_disc(i):
        schema = codes.VERTEBRA_GRADES
        conf = p if tags[0] == "v2" else 1.0 - p
        return [Evaluation(schema.concept, schema.value(tags[0]), _prob(conf))]
    d = i - N_VERTEBRAE
    schema = codes.DISC_GRADES
    if tags[0] == "v1":
        conf = 1.0 - p
    else:
        g = pred.grade_probs[d]
        k = int(tags[0][1]) - 1
        conf = p * float(g[k]) / max(float(g[1:].sum()), 1e-6)
    out = [Evaluation(schema.concept, schema.value(tags[0]), _prob(conf))]
    if "v5" in tags:
        out.append(Evaluation(schema.concept, schema.value("v5"), _prob(pred.schmorl[d])))
    return out


def _prob(x: float) -> float:
    return float(min(max(x, 0.0), 1.0)) if math.isfinite(x) else 0.0
