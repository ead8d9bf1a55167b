"""One realistic ``Findings`` per module kind, built from generated source headers.

Until the modules land these stand in for their ``predict``/``render`` output, with
the codes of :mod:`ai.core.codes` and the shapes the module specs describe:

- quality: several image-level labels on one DSA run, each with a confidence;
- mtici: one grade with finding site, referencing a frontal and a lateral run;
- keyframes: start / apex / end frame numbers of a coronary run in one finding, as
  ai/keyframes emits them, plus the KOS key frames;
- spine: disc and vertebra landmark points on the mid-sagittal slice, with grades
  (one disc with two labels, each with its own confidence).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from results.factories import StudyHeader, make_mr_series, make_xa, write

from ai.core import codes
from ai.core.contract import (
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    Measurement,
    Point,
    RenderedImage,
)

SHA = "3f" * 32


@dataclass
class Scenario:
    """Sources (written to ``directory``), the module output, and its renderings."""

    name: str
    sources: list[Dataset]
    findings: Findings
    images: list[RenderedImage] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def write_sources(self, directory: Path) -> list[Path]:
        self.paths = [write(ds, directory) for ds in self.sources]
        return self.paths


def ref(ds: Dataset, *frames: int) -> ImageReference:
    return ImageReference(str(ds.SOPInstanceUID), str(ds.SOPClassUID), tuple(frames))


def picture(value: int, rows: int = 48, cols: int = 64) -> np.ndarray:
    img = np.zeros((rows, cols, 3), dtype=np.uint8)
    img[..., 0] = value
    img[rows // 4: rows // 2, cols // 4: cols // 2] = (255, 255, 0)  # a "label" block
    return img


def quality(study: StudyHeader | None = None, module_version: str = "1.0.0") -> Scenario:
    study = study or StudyHeader(study_description="Thrombectomy")
    run = make_xa(study, frames=12, primary_angle=0.0)
    labels = codes.QUALITY_LABELS
    outputs = [("contrast", "present", 0.97), ("projection", "ap", 0.91), ("motion", "mild", 0.64),
               ("skull", "complete", 0.88), ("suitable", "yes", 0.93)]
    findings = tuple(
        Finding(
            tracking_id=f"{name.capitalize()}: {value} ({round(p * 100)} %)",
            finding=labels[name].concept,
            references=(ref(run),),
            evaluations=(Evaluation(labels[name].concept, labels[name].value(value), p),),
            confidence=p,  # as ai/quality gives it: the class probability, twice
            finding_site=labels[name].finding_site,
        )
        for name, value, p in outputs
    )
    return Scenario(
        "quality", [run],
        Findings("quality", module_version, SHA, findings, summary="usable: yes",
                 gate={"suitable": True}),
        [RenderedImage(picture(40), "MinIP with quality labels", ref(run))],
    )


def mtici(study: StudyHeader | None = None) -> Scenario:
    study = study or StudyHeader(study_description="Thrombectomy")
    frontal = make_xa(study, series_number=4, frames=10, primary_angle=2.0)
    lateral = make_xa(study, series_number=5, frames=10, primary_angle=88.0)
    grade = Finding(
        tracking_id="mTICI 2b (82 %)",
        finding=codes.MTICI,
        references=(ref(frontal), ref(lateral)),
        evaluations=(Evaluation(codes.MTICI, codes.MTICI_GRADES.value("2b")),),
        confidence=0.82,
        finding_site=codes.CEREBRAL_ARTERY,
    )
    success = Finding(
        tracking_id="Successful reperfusion: yes (95 %)",
        finding=codes.SUCCESSFUL_REPERFUSION,
        references=(ref(frontal), ref(lateral)),
        evaluations=(Evaluation(codes.SUCCESSFUL_REPERFUSION, codes.YES, 0.95),),
        finding_site=codes.CEREBRAL_ARTERY,
    )
    return Scenario(
        "mtici", [frontal, lateral],
        Findings("mtici", "0.3.1", SHA, (grade, success), summary="mTICI 2b"),
        [RenderedImage(picture(80), "frontal, mTICI 2b", ref(frontal, 6)),
         RenderedImage(picture(90), "lateral, mTICI 2b", ref(lateral, 6))],
    )


def keyframes(study: StudyHeader | None = None) -> Scenario:
    study = study or StudyHeader(study_description="Coronary angiography")
    run = make_xa(study, frames=40, primary_angle=-30.0, secondary_angle=20.0, body_part="HEART",
                  description="LCA cine")
    frames = {"start": (7, 0.91), "apex": (18, 0.86), "end": (33, 0.8)}
    # As ai/keyframes emits it: one finding, three frame numbers each with a confidence,
    # the group's certainty the lowest of them.
    findings = (Finding(
        tracking_id="Keyframes: start 7, apex 18, end 33",
        finding=codes.KEYFRAMES,
        references=(ref(run, 7, 18, 33),),
        measurements=tuple(Measurement(codes.KEYFRAME_CONCEPTS[name], float(frame), codes.FRAME,
                                       p, (frame,)) for name, (frame, p) in frames.items()),
        confidence=min(p for _, p in frames.values()),
        finding_site=codes.CORONARY_ARTERY,
    ),)
    return Scenario(
        "keyframes", [run],
        Findings("keyframes", "0.2.0", SHA, findings,
                 summary="AI key frames: start 7, apex 18, end 33",
                 key_frames=(ref(run, 7, 18, 33),)),
        [RenderedImage(picture(120, 48, 144), "key frames 7 / 18 / 33", ref(run, 18))],
    )


def spine(study: StudyHeader | None = None) -> Scenario:
    study = study or StudyHeader(study_description="MRI lumbar spine")
    slices = make_mr_series(study, slices=5)
    mid = slices[2]
    findings = []
    for i, (name, code) in enumerate(codes.DISCS.items()):
        evaluations = [Evaluation(codes.DISC_CLASS, codes.DISC_GRADES.value("v2"), 0.71)]
        if name == "L4-L5":  # a multi-label disc: two labels, two confidences
            evaluations.append(Evaluation(codes.DISC_CLASS, codes.DISC_GRADES.value("v5"), 0.58))
        findings.append(Finding(
            tracking_id=f"{name}: {'v2 bulge + v5' if len(evaluations) > 1 else 'v2 bulge'}",
            finding=code, references=(ref(mid),), evaluations=tuple(evaluations),
            confidence=0.97,  # as ai/spine gives it: the localisation score; grades their own
            finding_site=code, point=Point(30.0 + 0.5 * i, 6.0 + 9.0 * i, (0.0, -2.0, 50.0 - 8.4 * i)),
        ))
    for i, name in enumerate(["L1", "L2", "L3", "L4", "L5"]):
        code = codes.VERTEBRAE[name]
        findings.append(Finding(
            tracking_id=f"{name}: v1 normal (90 %)", finding=code, references=(ref(mid),),
            evaluations=(Evaluation(codes.VERTEBRA_CLASS, codes.VERTEBRA_GRADES.value("v1"), 0.9),),
            finding_site=code, point=Point(31.0, 10.5 + 9.0 * i),
        ))
    return Scenario(
        "spine", slices,
        Findings("spine", "1.1.0", SHA, tuple(findings), summary="11 landmarks"),
        [RenderedImage(picture(200), "landmarks on the mid-sagittal slice", ref(mid))],
    )
