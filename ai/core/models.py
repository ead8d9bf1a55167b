"""Model versions on disk: ``weights.safetensors`` + a MONAI-bundle-style ``metadata.json``.

A model version is a directory::

    <version>/
        weights.safetensors   the network's state dict
        metadata.json         what made it and how to rebuild it (see below)

``metadata.json`` follows the spirit of the MONAI bundle specification
(``docs/source/mb_specification.rst``: version, changelog, framework versions, task,
data source, metrics) and adds what the node needs to rebuild and trust the model:

=================  ==============================================================
``module``         the module name (``"quality"``)
``version``        the version string the index and every SR name
``changelog``      version → note
``config``         the module's config: ``network``, ``preprocessing``, ``training``, …
``training_data``  description of the data it was trained on (source, n, seed)
``metrics``        evaluation metrics (the module's keys, see ``modules.md``)
``sha256``         of ``weights.safetensors``; checked on every load
``created``        UTC ISO timestamp
``command``        the command line that made it
=================  ==============================================================
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from ai.core.contract import AIModule

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
SCHEMA_VERSION = 1


class ModelError(Exception):
    """A model version directory is missing, incomplete or for another module."""


class ModelIntegrityError(ModelError):
    """The weights' sha256 differs from the one recorded in ``metadata.json``."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata.json`` of the model version at ``path`` (a directory).

    Raises
    ------
    ModelError
        ``path`` holds no readable ``metadata.json`` or it lacks ``module``/``version``.
    """
    meta_path = Path(path) / METADATA_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{meta_path} does not exist (not a model version)") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path}: invalid JSON: {exc}") from None
    for key in ("module", "version", "sha256", "config"):
        if key not in meta:
            raise ModelError(f"{meta_path}: missing key {key!r}")
    return dict(meta)


def resolve_device(device: str | None = None) -> torch.device:
    """``"cpu"`` (default), ``"cuda"``/``"cuda:N"``, or ``"auto"`` (CUDA when present).

    Raises
    ------
    ValueError
        CUDA was asked for but is not available.
    """
    import torch

    name = (device or "cpu").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available")
    return torch.device(name)


@dataclass
class LoadedModel:
    """A model version ready for inference: the network in eval mode on ``device``.

    ``version`` and ``sha256`` are what every result names (algorithm identification).
    """

    module: str
    version: str
    sha256: str
    network: torch.nn.Module
    config: dict[str, Any]
    device: torch.device
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def load_model(
    path: Path | str,
    module: AIModule | str,
    device: str | torch.device | None = "cpu",
    *,
    verify: bool = True,
) -> LoadedModel:
    """Load the model version at ``path`` for ``module``.

    Parameters
    ----------
    path : Path
        A model version directory (``weights.safetensors`` + ``metadata.json``).
    module : AIModule or str
        The module (or its name, looked up in the entry points) whose
        :meth:`~ai.core.contract.AIModule.network` builds the network.
    device : str or torch.device, optional
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    verify : bool, optional
        Check the weights' sha256 against the metadata (default True).

    Raises
    ------
    ModelError
        The directory is incomplete or belongs to another module.
    ModelIntegrityError
        The weights' sha256 does not match.
    """
    import torch
    from safetensors.torch import load_file

    if isinstance(module, str):
        from ai.core.registry import get_module

        module = get_module(module)
    path = Path(path)
    meta = read_metadata(path)
    if meta["module"] != module.name:
        raise ModelError(f"{path} is a {meta['module']!r} model, not {module.name!r}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights} does not exist")
    digest = sha256_file(weights)
    if verify and digest != meta["sha256"]:
        raise ModelIntegrityError(
            f"{weights}: sha256 {digest} differs from metadata.json's {meta['sha256']}"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    config = dict(meta["config"])
    network = module.network(config)
    state = load_file(str(weights), device="cpu")
    network.load_state_dict(state)
    network.to(dev).eval()
    logger.info("loaded %s model %s (sha256 %s) on %s", module.name, meta["version"],
                digest[:12], dev)
    return LoadedModel(
        module=module.name, version=str(meta["version"]), sha256=digest, network=network,
        config=config, device=dev, path=path, metadata=meta,
    )


def new_version_name(now: dt.datetime | None = None) -> str:
    """A sortable version name for a freshly trained model: ``YYYYMMDD.HHMMSS``."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%d.%H%M%S")


def save_model_version(
    out_dir: Path | str,
    module: str,
    network: torch.nn.Module,
    config: Mapping[str, Any],
    *,
    version: str,
    changelog: Mapping[str, str] | None = None,
    training_data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    command: str = "",
    description: str = "",
) -> Path:
    """Write a model version directory and return its path.

    The weights are written first and hashed; ``metadata.json`` is written last
    (through a temporary name and a rename), so a directory with a metadata file is
    complete.

    Parameters
    ----------
    out_dir : Path
        The version directory to create (may exist; its two files are replaced).
    module : str
        Module name.
    network : torch.nn.Module
        The trained network; its state dict is saved (on CPU, contiguous).
    config : mapping
        The module config the network was built from (JSON-serialisable).
    version, changelog, training_data, metrics, command, description :
        Recorded in ``metadata.json``.
    """
    import monai
    import numpy
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    weights = out / WEIGHTS_FILE
    # No safetensors metadata: its keys are written in hash-map order, so the same
    # weights would get a different sha256 from run to run.
    save_file(state, str(weights))
    digest = sha256_file(weights)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "module": module,
        "version": version,
        "changelog": dict(changelog or {version: "trained"}),
        "description": description,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "config": dict(config),
        "training_data": dict(training_data or {}),
        "metrics": dict(metrics or {}),
        "sha256": digest,
        "weights_file": WEIGHTS_FILE,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "command": command,
    }
    tmp = out / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(out / METADATA_FILE)
    return out


def update_metadata(path: Path | str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a version's ``metadata.json`` (e.g. metrics after evaluation).

    ``sha256`` and ``module`` cannot be changed this way.
    """
    path = Path(path)
    meta = read_metadata(path)
    for key in ("sha256", "module"):
        if key in fields:
            raise ValueError(f"{key} of a model version cannot be changed")
    meta.update(fields)
    tmp = path / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    tmp.replace(path / METADATA_FILE)
    return meta


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, dt.datetime)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
