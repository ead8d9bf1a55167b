"""The AI module contract (``ai-interface.md``).

A module knows pixels and a few DICOM attributes; it knows nothing of the network,
the index or structured reports.  The node hands a module a read-only
:class:`StudyView` of a complete study, the module picks its :class:`Case` inputs
(:meth:`AIModule.select`), runs its network (:meth:`AIModule.predict`) and returns
:class:`Findings`: plain, frozen data that the results layer turns into DICOM SR,
Secondary Capture and Key Object Selection objects.

Everything here is dependency-free (no torch, no pydicom) so that the results layer
and the routing layer can import it cheaply.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

    from ai.core.models import LoadedModel


@dataclass(frozen=True)
class Code:
    """A coded concept: (value, scheme designator, meaning).

    Parameters
    ----------
    value : str
        Code Value (at most 16 characters so that no LongCodeValue is needed).
    scheme : str
        Coding Scheme Designator, e.g. ``"DCM"``, ``"SCT"`` or ``"99DICOMNODE"``.
    meaning : str
        Code Meaning (at most 64 characters).
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not 0 < len(self.value) <= 16:
            raise ValueError(f"Code value {self.value!r} must have 1..16 characters")
        if not 0 < len(self.meaning) <= 64:
            raise ValueError(f"Code meaning {self.meaning!r} must have 1..64 characters")


# ---------------------------------------------------------------------------
# What the node shows a module: a read-only view of one complete study.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceView:
    """One stored instance: identity, file path (for lazy pixel reads) and attributes.

    ``attributes`` holds header values by DICOM keyword (e.g. ``ImagePositionPatient``,
    ``PixelSpacing``, ``FrameTime``) as plain Python values.
    """

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    instance_number: int | None = None
    number_of_frames: int = 1
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesView:
    """One series of the study with the attributes routing and selection use."""

    series_instance_uid: str
    modality: str
    instances: tuple[InstanceView, ...]
    series_description: str = ""
    body_part_examined: str = ""
    image_type: tuple[str, ...] = ()
    series_number: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyView:
    """A complete study as the module sees it."""

    study_instance_uid: str
    series: tuple[SeriesView, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """The inputs one prediction runs on (one series, or a frontal + lateral pair)."""

    module: str
    study_instance_uid: str
    inputs: tuple[InstanceView, ...]
    series: tuple[SeriesView, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """What :meth:`AIModule.select` returns: cases to run, or none with the reason."""

    cases: tuple[Case, ...]
    reason: str = ""


# ---------------------------------------------------------------------------
# What a module returns.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReference:
    """A source image (and optionally 1-based frame numbers) a finding was inferred from."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Point:
    """A landmark: pixel coordinates on the referenced image and optionally patient coordinates.

    ``column`` and ``row`` follow DICOM SCOORD convention (column = x, row = y), in pixels,
    with the top-left corner of the top-left pixel at (0, 0) as PS3.3 C.18.6.1.1 defines.
    ``patient`` is (x, y, z) in millimetres in the patient coordinate system.
    """

    column: float
    row: float
    patient: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Evaluation:
    """A qualitative result: ``concept`` has the coded ``value`` with a confidence in [0, 1]."""

    concept: Code
    value: Code
    confidence: float | None = None


@dataclass(frozen=True)
class Measurement:
    """A numeric result with UCUM unit; ``frame_numbers`` when it was read off given frames."""

    concept: Code
    value: float
    unit: Code
    confidence: float | None = None
    frame_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One finding: a measurement group in the SR.

    Parameters
    ----------
    tracking_id : str
        Human-readable tracking identifier, unique within the :class:`Findings`
        (viewers show it, e.g. ``"Contrast: present (97 %)"``).
    finding : Code
        What was assessed (the value of the SR's Finding item).
    references : tuple of ImageReference
        The source images (and frames) it was inferred from; at least one.
    evaluations, measurements :
        The qualitative (CODE) and numeric (NUM) results.
    confidence : float, optional
        Certainty of the finding in [0, 1].
    finding_site : Code, optional
        Anatomy the finding is about.
    point : Point, optional
        For landmarks: a point on ``references[0]`` (a TID 1410 group).
    """

    tracking_id: str
    finding: Code
    references: tuple[ImageReference, ...]
    evaluations: tuple[Evaluation, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    confidence: float | None = None
    finding_site: Code | None = None
    point: Point | None = None


@dataclass(frozen=True)
class Findings:
    """Everything one prediction produced: plain data, no DICOM objects.

    ``key_frames`` lists the images and frames a Key Object Selection should flag
    (keyframes module).  ``gate`` tells dependent modules whether the inputs are usable
    (e.g. ``{"suitable": True}`` from ``quality``).  ``extra`` carries JSON-serialisable
    details (class probabilities …) for the index and ``dicomnode jobs show``.
    """

    module: str
    model_version: str
    model_sha256: str
    findings: tuple[Finding, ...]
    summary: str = ""
    key_frames: tuple[ImageReference, ...] = ()
    gate: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedImage:
    """An RGB uint8 image (H, W, 3) for people, with a caption and the source it shows."""

    pixels: np.ndarray
    caption: str
    source: ImageReference


# ---------------------------------------------------------------------------
# The module interface.
# ---------------------------------------------------------------------------


class AIModule(abc.ABC):
    """Base class every AI module implements; found through ``dicomnode.modules`` entry points.

    Class attributes
    ----------------
    name : str
        Short name used in rules, the CLI and the index (``"quality"``).
    title : str
        Human title (``"DSA image quality (CLAIRE-DSA)"``).
    level : str
        ``"series"`` (one case per matched series) or ``"study"`` (cases from the whole study).
    depends_on : tuple of str
        Modules whose findings :meth:`select` receives in ``prior`` (``mtici`` after ``quality``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    level: ClassVar[str] = "series"
    depends_on: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def select(
        self, study: StudyView, prior: Mapping[str, Sequence[Findings]] | None = None
    ) -> Selection:
        """Pick the inputs this module runs on from a complete study (or none, with a reason)."""

    @abc.abstractmethod
    def predict(self, case: Case, model: LoadedModel) -> Findings:
        """Run the network on one case."""

    @abc.abstractmethod
    def render(self, case: Case, findings: Findings) -> list[RenderedImage]:
        """Images a radiologist should look at, with burned-in labels."""

    @abc.abstractmethod
    def network(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """Build the network (MONAI networks and blocks) from its config."""

    @abc.abstractmethod
    def synthetic(self, n: int, seed: int) -> Sequence[Any]:
        """``n`` synthetic samples with exact ground truth, reproducible from ``seed``."""

    @abc.abstractmethod
    def load(self, path: Path) -> Sequence[Any]:
        """Samples from the real public data format at ``path``."""

    @abc.abstractmethod
    def metrics(self, predictions: Sequence[Any], truth: Sequence[Any]) -> dict[str, Any]:
        """The metrics the method's paper reports."""
