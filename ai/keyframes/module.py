"""``KeyframesModule``: start, apex and end keyframes of a coronary cine run (STA-IPCon).

select
    Every unsubtracted multi-frame XA run of the heart (one case per series).
predict
    Frames -> 64 x 64 working frames -> vessel maps -> :class:`KeyframesNet` ->
    the best filling and wash-out segments -> three 1-based frame numbers with
    confidences: one TID 1501 finding with three NUM items (results-notes §4.4) and
    ``key_frames`` for the Key Object Selection.
render
    The three frames side by side, labelled (RGB).
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ai.core import codes
from ai.core.contract import (
    AIModule,
    Case,
    Finding,
    Findings,
    ImageReference,
    InstanceView,
    Measurement,
    RenderedImage,
    Selection,
    SeriesView,
    StudyView,
)
from ai.core.models import LoadedModel
from ai.keyframes.datasets import load_vessel_json, write_vessel_json
from ai.keyframes.detection import Detection, blend_apex, decode_run, detection_loss
from ai.keyframes.metrics import keyframe_metrics
from ai.keyframes.network import DEFAULT_NETWORK, KeyframesNet, pyramid_points
from ai.keyframes.synthetic import KeyframeSample, SyntheticRuns
from ai.keyframes.transforms import (
    PrepareRund,
    RandTemporalCropd,
    read_working_frames,
    run_background,
)

logger = logging.getLogger(__name__)

#: SOP classes of angiographic runs (X-Ray Angiographic, Enhanced XA).
XA_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1")
#: Body Part Examined values of cardiac runs (PS3.16 Annex L defined terms and habits).
CARDIAC_BODY_PARTS = {"HEART", "CHEST", "THORAX", "CORONARY", "CORONARYARTERY", "CARDIAC"}
#: Words of series / study descriptions naming a coronary run.
CORONARY_WORDS = ("CORO", "LCA", "RCA", "LAD", "LCX", "CARDIAC", "HEART", "CARDIO", "CATH")
#: Shorter runs cannot hold a filling and a wash-out.
MIN_RUN_FRAMES = 16
DICOM_SIZE = 512
ROLES = ("start", "apex", "end")


def is_subtracted(series: SeriesView, instance: InstanceView) -> bool:
    """Whether a run is a DSA (subtracted) run: Image Type with ``SUBTR``/``DSA``,
    Recommended Viewing Mode ``SUB``, or "DSA"/"SUB" in the description."""
    image_type = [str(v).upper() for v in (instance.attributes.get("ImageType") or
                                           series.image_type or ())]
    if any("SUBTR" in v or v == "DSA" for v in image_type):
        return True
    if str(instance.attributes.get("RecommendedViewingMode", "")).upper() == "SUB":
        return True
    words = series.series_description.upper().replace("_", " ").split()
    return "DSA" in words or "SUB" in words


def is_cardiac(series: SeriesView, instance: InstanceView, study: StudyView) -> bool:
    """Body Part Examined of the heart, or a coronary word in a description."""
    part = (instance.attributes.get("BodyPartExamined") or series.body_part_examined or "")
    if str(part).upper().replace(" ", "") in CARDIAC_BODY_PARTS:
        return True
    text = " ".join([series.series_description,
                     str(study.attributes.get("StudyDescription", "") or "")]).upper()
    return not part and any(word in text for word in CORONARY_WORDS)


class KeyframesModule(AIModule):
    """XCA keyframes (STA-IPCon): contrast start, apex and end frames of a cine run."""

    name = "keyframes"
    title = "Coronary angiography keyframes (STA-IPCon)"
    level = "series"

    # -- the node's path ---------------------------------------------------------
    def select(self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
               ) -> Selection:
        cases, skipped = [], []
        for series in study.series:
            if series.modality.upper() != "XA":
                continue
            runs = [i for i in series.instances if i.sop_class_uid in XA_SOP_CLASSES]
            runs = [i for i in runs if i.number_of_frames >= MIN_RUN_FRAMES]
            if not runs:
                continue
            inst = max(runs, key=lambda i: i.number_of_frames)
            if is_subtracted(series, inst):
                skipped.append(f"series {series.series_number}: subtracted (DSA)")
                continue
            if not is_cardiac(series, inst, study):
                skipped.append(f"series {series.series_number}: not a cardiac run")
                continue
            cases.append(Case(module=self.name, study_instance_uid=study.study_instance_uid,
                              inputs=(inst,), series=(series,),
                              info={"fps": _fps(inst.attributes)}))
        if not cases:
            why = "; ".join(skipped) if skipped else "no multi-frame XA run"
            return Selection(cases=(), reason=f"no coronary cine run ({why})")
        return Selection(cases=tuple(cases))

    def predict(self, case: Case, model: LoadedModel) -> Findings:
        inst = case.inputs[0]
        frames, fps, _ = read_working_frames(inst.path)
        det = self.detect(model, frames=frames)
        return self.findings_from_detection(det, inst, fps, model)

    def detect(self, model: LoadedModel, *, frames: torch.Tensor | None = None,
               maps: torch.Tensor | None = None) -> Detection:
        """Segments and keyframes of one run from working frames (T, 64, 64) uint8 or maps."""
        net: KeyframesNet = model.network  # type: ignore[assignment]
        with torch.inference_mode():
            if maps is None:
                if frames is None:
                    raise ValueError("give frames or maps")
                bg = run_background(frames).round().to(model.device) / 255.0
                x = frames.to(model.device, torch.float32) / 255.0
                maps = torch.cat([net.vessel_maps(c, bg) for c in x.split(64)])
            maps = maps.to(model.device, torch.float32)
            t = maps.shape[0]
            length = max(net.max_stride, math.ceil(t / net.max_stride) * net.max_stride)
            padded = F.pad(maps, (0, 0, 0, 0, 0, length - t))[None]
            mask = (torch.arange(length, device=model.device) < t)[None]
            out = net(padded, mask)
            dec = model.config.get("decoding", {})
            det = decode_run([o[0] for o in out["logits"]], [o[0] for o in out["offsets"]],
                             [m[0] for m in out["masks"]], net.points(length, model.device),
                             t, **decoding_options(dec))
            curve = maps.flatten(1).sum(1).cpu().numpy()
            det = replace(det, info={**det.info, "opacification": curve})
            if dec.get("apex_blend"):
                det = blend_apex(det, curve, dec["apex_blend"])
            return det

    def findings_from_detection(self, det: Detection, inst: InstanceView, fps: float | None,
                                model: LoadedModel) -> Findings:
        """One finding (three NUM frame numbers), the KOS frames and a summary."""
        numbers = tuple(k + 1 for k in det.keyframes)  # DICOM frame numbers are 1-based
        unique = tuple(sorted(set(numbers)))
        concepts = [codes.KEYFRAME_CONCEPTS[r] for r in ROLES]
        measurements = tuple(
            Measurement(concept=c, value=float(n), unit=codes.FRAME, confidence=float(conf),
                        frame_numbers=(n,))
            for c, n, conf in zip(concepts, numbers, det.confidences, strict=True))
        ref = ImageReference(sop_instance_uid=inst.sop_instance_uid,
                             sop_class_uid=inst.sop_class_uid, frame_numbers=unique)
        conf = float(min(det.confidences))
        finding = Finding(
            tracking_id=f"Keyframes: start {numbers[0]}, apex {numbers[1]}, end {numbers[2]}",
            finding=codes.KEYFRAMES, references=(ref,), measurements=measurements,
            confidence=conf, finding_site=codes.CORONARY_ARTERY)
        extra: dict[str, Any] = {
            "frame_numbers": dict(zip(ROLES, numbers, strict=True)),
            "confidences": {r: round(float(c), 4) for r, c in zip(ROLES, det.confidences, strict=True)},
            "number_of_frames": inst.number_of_frames,
            "segments": [{"label": int(lab), "frames": [round(float(a) + 1, 2),
                                                        round(float(b) + 1, 2)],
                          "score": round(float(s), 4)}
                         for (a, b), s, lab in list(zip(det.segments, det.scores,
                                                         det.labels, strict=True))[:6]],
        }
        if fps:
            extra["fps"] = round(fps, 3)
            extra["times_s"] = {r: round((n - 1) / fps, 3) for r, n in zip(ROLES, numbers, strict=True)}
        summary = (f"contrast start frame {numbers[0]}, apex {numbers[1]}, end {numbers[2]} "
                   f"of {inst.number_of_frames}")
        return Findings(module=self.name, model_version=model.version,
                        model_sha256=model.sha256, findings=(finding,), summary=summary,
                        key_frames=(ref,), extra=extra)

    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        from ai.core.pixels import FrameReader
        from ai.keyframes.render import keyframe_montage

        inst = case.inputs[0]
        numbers = [int(m.value) for m in findings.findings[0].measurements]
        with FrameReader(inst.path) as reader:
            frames = [np.asarray(reader.frame(n - 1)) for n in numbers]
            mono1 = str(reader.header.get("PhotometricInterpretation")) == "MONOCHROME1"
        if mono1:
            frames = [f.max() - f for f in frames]
        labels = [f"{r.upper()}  frame {n}" for r, n in zip(ROLES, numbers, strict=True)]
        pixels = keyframe_montage(frames, labels, "Contrast keyframes (STA-IPCon)",
                                  f"model {findings.model_version}  "
                                  f"sha256 {findings.model_sha256[:12]}")
        return [RenderedImage(pixels=pixels, caption="Keyframes: start, apex, end",
                              source=ImageReference(sop_instance_uid=inst.sop_instance_uid,
                                                    sop_class_uid=inst.sop_class_uid,
                                                    frame_numbers=tuple(sorted(set(numbers)))))]

    # -- network and data --------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        return {
            "network": {**DEFAULT_NETWORK, "vessel": "unet"},
            "preprocessing": {"working_size": 64, "resample": "area", "window_percentiles":
                              [1.0, 99.5], "invert": "unless MONOCHROME1", "quantise": "uint8"},
            "decoding": {"pre_nms_thresh": 1e-3, "pre_nms_topk": 2000, "nms": "soft, sigma 0.5",
                         "voting_thresh": 0.6, "voting_power": 2.0, "pair_topk": 10,
                         "keyframes": "start=fill.start, apex=mean(fill.end, wash.start), "
                                      "end=wash.end"},
            "training": {"epochs": 8, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.05,
                         "grad_clip": 1.0, "cache_rate": 1.0, "train_n": 200, "val_n": 40,
                         "max_seq_len": 128, "contrast_weight": 0.1, "vessel_weight": 1.0},
        }

    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        return KeyframesNet(config.get("network", {}))

    def synthetic(self, n: int, seed: int) -> SyntheticRuns:
        return SyntheticRuns(n, seed)

    def benchmark_samples(self, n: int, seed: int) -> SyntheticRuns:
        """Runs at the timing target's size: 100 frames of 512 x 512."""
        return SyntheticRuns(n, seed, size=DICOM_SIZE, supersample=1, num_frames=100)

    def load(self, path: Path) -> list[KeyframeSample]:
        return load_vessel_json(path)

    def dataset(self, samples: Sequence[Any], config: Mapping[str, Any], *, train: bool
                ) -> torch.utils.data.Dataset[Any]:
        from monai.data import CacheDataset
        from monai.transforms import Compose

        steps: list[Any] = [PrepareRund()]
        if train:
            crop = RandTemporalCropd(length=int(config["training"].get("max_seq_len", 128)))
            crop.set_random_state(seed=0)
            steps.append(crop)
        rate = float(config.get("training", {}).get("cache_rate", 1.0))
        return CacheDataset(data=list(samples), transform=Compose(steps), cache_rate=rate,
                            num_workers=0, progress=False)

    def forward(self, network: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Vessel maps (the UNet's or the filter's, detached) -> temporal network.

        Training with a UNet also trains it on ``vessel_train_frames`` frames per run
        against the ground-truth maps; for the first ``vessel_only_steps`` steps nothing
        else runs.  Then the temporal network gets the ground-truth maps of a run with
        the teacher-forcing probability (1, falling to 0 at ``teacher_until``): it learns
        on clean maps while the UNet is still poor, then adapts to the UNet's maps it
        will see at inference.
        """
        net: KeyframesNet = network  # type: ignore[assignment]
        mask = batch["mask"]
        extra: dict[str, Any] = {}
        if "maps" in batch:
            return net(batch["maps"].float(), mask)
        frames = batch["frames"].float() / 255.0
        bg = batch["background"].float()[:, None] / 255.0  # (B, 1, 64, 64)
        trains_unet = net.training and any(p.requires_grad for p in net.vessel.parameters())
        if trains_unet:
            k = int(net.config["vessel_train_frames"]) * frames.shape[0]
            idx = torch.nonzero(mask)[torch.randperm(int(mask.sum()))[:k]]
            x = net.vessel_input(frames[idx[:, 0], idx[:, 1]], bg[idx[:, 0], 0])
            extra["vessel_logits"] = net.vessel(x)[:, 0]
            extra["vessel_target"] = batch["vessel"][idx[:, 0], idx[:, 1]].float() / 255.0
            vessel_only = net.vessel_only()
            teacher = torch.rand(frames.shape[0]) < net.teacher_probability()
            net.train_steps += 1
            if vessel_only:
                return extra
        else:
            teacher = torch.zeros(frames.shape[0], dtype=torch.bool)
        teacher = teacher.to(mask.device)
        maps = batch["vessel"].float() / 255.0 * teacher[:, None, None, None].to(frames)
        todo = mask & ~teacher[:, None]
        if todo.any():
            rows = torch.nonzero(todo)
            with torch.no_grad():
                maps[todo] = torch.cat([
                    net.vessel_maps(frames[r[:, 0], r[:, 1]], bg[r[:, 0], 0])
                    for r in rows.split(128)])
        out = net(maps, mask)
        out.update(extra)
        return out

    def loss(self, outputs: Any, batch: Mapping[str, Any], config: Mapping[str, Any]
             ) -> torch.Tensor:
        tcfg = config.get("training", {})
        total = torch.zeros((), device=batch["mask"].device)
        if "logits" in outputs:  # not in the UNet-only phase
            length = batch["mask"].shape[1]
            points = pyramid_points(config.get("network", {}), length, batch["mask"].device)
            total = detection_loss(outputs, points, batch["segments"], batch["labels"],
                                   contrast_weight=float(tcfg.get("contrast_weight", 0.1))
                                   )["total"]
        if "vessel_logits" in outputs:
            total = total + float(tcfg.get("vessel_weight", 1.0)) * \
                F.binary_cross_entropy_with_logits(outputs["vessel_logits"],
                                                   outputs["vessel_target"])
        return total

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[Any]:
        length = outputs["masks"][0].shape[1]
        points = pyramid_points(config.get("network", {}), length,
                                outputs["masks"][0].device)
        preds = []
        for i in range(outputs["masks"][0].shape[0]):
            t = int(outputs["masks"][0][i].sum())
            det = decode_run([o[i] for o in outputs["logits"]], [o[i] for o in outputs["offsets"]],
                             [m[i] for m in outputs["masks"]], points, t,
                             **decoding_options(config.get("decoding", {})))
            preds.append(_prediction(det))
        return preds

    def infer(self, model: LoadedModel, samples: Sequence[Any], batch_size: int = 16
              ) -> list[Any]:
        """One run at a time (runs differ in length), exactly as :meth:`predict` runs."""
        prep = PrepareRund()
        preds = []
        for sample in samples:
            item = prep(sample)
            det = self.detect(model, frames=item.get("frames"), maps=item.get("maps"))
            preds.append(_prediction(det))
        return preds

    def truth(self, sample: KeyframeSample) -> dict[str, Any]:
        return {"keyframes": sample.keyframes, "num_frames": sample.num_frames,
                "run_id": sample.run_id}

    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        return keyframe_metrics(predictions, truth)

    # -- synthetic DICOM ---------------------------------------------------------
    def write_dicom(self, samples: Sequence[Any], out_dir: Path) -> list[Path]:
        """One study per run (XA multi-frame, 512 x 512 at least), ``keyframes.csv`` of the
        truth (1-based frame numbers) and the runs in the ``vessel.json`` layout."""
        from pydicom.uid import generate_uid

        from ai.keyframes.dicomio import write_dataset, xa_cine_dataset
        from ai.keyframes.synthetic import render_run

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths, rows, rendered = [], [], []
        base = dt.datetime(2026, 2, 2, 9, 0, 0)
        for i, s in enumerate(samples):
            if s.params is None:
                raise ValueError("only synthetic runs can be written as DICOM")
            size = max(s.size, DICOM_SIZE)
            frames, vessel, info = render_run(s.params, size, s.supersample if
                                              s.size >= DICOM_SIZE else 1)
            ds = xa_cine_dataset(frames, s.fps, patient_id=f"SYNK{s.params.seed % 10**4:04d}"
                                 f"{s.params.index:04d}", study_uid=generate_uid(),
                                 series_uid=generate_uid(), series_number=1,
                                 when=base + dt.timedelta(minutes=11 * i),
                                 primary_angle=info["primary_angle"],
                                 secondary_angle=info["secondary_angle"])
            paths.append(write_dataset(out_dir / f"run{i:04d}.dcm", ds))
            rows.append(f"{paths[-1].name},{s.run_id},{s.fps},{s.start + 1},{s.apex + 1},"
                        f"{s.end + 1},{s.num_frames}\n")
            rendered.append(KeyframeSample(s.run_id, s.fps, s.start, s.apex, s.end,
                                           vessel=vessel, subset="test"))
        with open(out_dir / "keyframes.csv", "w") as fh:
            fh.write("path,run_id,fps,start_frame,apex_frame,end_frame,number_of_frames\n")
            fh.writelines(rows)
        write_vessel_json(rendered, out_dir / "vessel")
        return paths


def decoding_options(decoding: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`decode_run` keyword arguments from a model's ``decoding`` config (a model
    saved without ``voting_thresh`` or ``pair_topk`` decodes as it was evaluated: the
    best segment of each class, no voting)."""
    vote = decoding.get("voting_thresh")
    return {"pre_nms_thresh": float(decoding.get("pre_nms_thresh", 1e-3)),
            "pre_nms_topk": int(decoding.get("pre_nms_topk", 2000)),
            "voting_thresh": None if vote is None else float(vote),
            "voting_power": float(decoding.get("voting_power", 2.0)),
            "pair_topk": int(decoding.get("pair_topk", 1))}


def _prediction(det: Detection) -> dict[str, Any]:
    return {"keyframes": det.keyframes, "segments": det.segments, "scores": det.scores,
            "labels": det.labels, "confidences": det.confidences}


def _fps(attributes: Mapping[str, Any]) -> float | None:
    from ai.keyframes.transforms import frame_rate

    return frame_rate(attributes)
