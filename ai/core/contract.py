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

    # -- training and evaluation hooks (used by ``train/``; none is needed by the node) --
    #
    # A *sample* is whatever :meth:`synthetic` and :meth:`load` yield.  Training turns
    # samples into dicts of tensors (:meth:`transform`), batches them with MONAI's
    # ``DataLoader``, runs :meth:`forward` and :meth:`loss`; evaluation runs
    # :meth:`infer` (:meth:`forward` + :meth:`decode`) and compares with
    # :meth:`truth` through :meth:`metrics`.  ``train/loop.py`` documents the flow.

    def default_config(self) -> dict[str, Any]:
        """Network, preprocessing and training configuration of a new model.

        Returns
        -------
        dict
            JSON-serialisable; by convention with keys ``"network"``,
            ``"preprocessing"`` and ``"training"`` (``epochs``, ``batch_size``, ``lr``,
            ``weight_decay``, ``cache_rate``, ``train_n``).  The config is stored in
            the model version's ``metadata.json`` and handed back to :meth:`network`,
            :meth:`transform` and :meth:`decode` when the version is loaded.
        """
        return {}

    def transform(self, config: Mapping[str, Any], *, train: bool) -> Any:
        """A callable turning one sample into a dict of tensors for the network.

        The dict holds the network input(s) (``"image"`` by default) and, when the
        sample has ground truth, the targets :meth:`loss` reads.  ``train`` selects
        random augmentation; with ``train=False`` the result must be deterministic.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support training")

    def dataset(
        self, samples: Sequence[Any], config: Mapping[str, Any], *, train: bool
    ) -> torch.utils.data.Dataset[Any]:
        """A MONAI dataset over ``samples``; cached when ``training.cache_rate`` > 0.

        A plain callable from :meth:`transform` is taken as deterministic and its
        results are cached (wrapped in MONAI ``Lambda``; MONAI would otherwise treat
        a non-``Transform`` callable as random and recompute it every epoch).  For
        augmentation return a MONAI ``Compose``: it is cached up to its first
        ``Randomizable`` transform.  Modules whose items are large set
        ``cache_rate`` to 0 or override this.
        """
        from monai.data import CacheDataset, Dataset
        from monai.transforms import Lambda, Transform

        fn = self.transform(config, train=train)
        if not isinstance(fn, Transform):
            fn = Lambda(fn)
        rate = float(config.get("training", {}).get("cache_rate", 1.0))
        if rate <= 0:
            return Dataset(data=list(samples), transform=fn)
        return CacheDataset(
            data=list(samples), transform=fn, cache_rate=rate, num_workers=0, progress=False
        )

    def forward(self, network: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
        """Run ``network`` on a collated batch (default: ``network(batch["image"])``)."""
        return network(batch["image"])

    def loss(
        self, outputs: Any, batch: Mapping[str, Any], config: Mapping[str, Any]
    ) -> torch.Tensor:
        """The scalar training loss of one batch."""
        raise NotImplementedError(f"{type(self).__name__} does not support training")

    def decode(self, outputs: Any, config: Mapping[str, Any]) -> list[Any]:
        """Per-sample predictions (plain Python / numpy) from one batch of outputs.

        The predictions are what :meth:`metrics` takes as ``predictions``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support evaluation")

    def truth(self, sample: Any) -> Any:
        """The ground truth of one sample, as :meth:`metrics` takes it."""
        raise NotImplementedError(f"{type(self).__name__} does not support evaluation")

    def infer(
        self, model: LoadedModel, samples: Sequence[Any], batch_size: int = 16
    ) -> list[Any]:
        """Batch inference over samples (evaluation); one prediction per sample, in order."""
        import torch
        from monai.data import DataLoader

        ds = self.dataset(samples, {**model.config, "training": {"cache_rate": 0}}, train=False)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
        predictions: list[Any] = []
        with torch.inference_mode():
            for batch in loader:
                batch = {
                    k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
                predictions.extend(self.decode(self.forward(model.network, batch), model.config))
        return predictions

    def write_dicom(self, samples: Sequence[Any], out_dir: Path) -> list[Path]:
        """Write synthetic samples as DICOM files a user can push (``dicomnode synth``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write DICOM")

    def benchmark_samples(self, n: int, seed: int) -> Sequence[Any]:
        """Samples at the size the spec's CPU timing target names (default: :meth:`synthetic`).

        ``dicomnode evaluate`` writes them with :meth:`write_dicom` and times
        :meth:`select` + :meth:`predict` on the files: reading and preprocessing included.
        """
        return self.synthetic(n, seed)

    def bundled_model_path(self) -> Path:
        """The directory of the bundled model version (``ai/<module>/model``)."""
        import sys

        return Path(sys.modules[type(self).__module__].__file__ or ".").parent / "model"
