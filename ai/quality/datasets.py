"""The sample type and the loader of the real-data format.

The paper's data are not public; the real format is a CSV::

    path,contrast,projection,skull,...
    runs/0001.dcm,present,ap,complete,...
    minips/0002.png,absent,lateral,,...

``path`` (relative to the CSV's folder, or absolute) names a DICOM run (its MinIP
is computed here) or a PNG MinIP (8- or 16-bit grey).  The other columns are label
names of the schema; an empty cell means "not rated" and is ignored by the loss and
the metrics.  Class names are matched case-insensitively.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ai.quality.synthetic import RunParams, render_run

logger = logging.getLogger(__name__)

PNG_SUFFIXES = {".png"}


@dataclass(frozen=True)
class QualitySample:
    """One run (synthetic parameters or a file) and its labels (label → class name).

    ``size`` is the matrix a synthetic run is rendered at; ``frames`` overrides its
    frame count (the timing benchmark renders 60).
    """

    labels: dict[str, str]
    params: RunParams | None = None
    path: Path | None = None
    size: int = 256
    frames: int | None = None
    info: dict[str, str] = field(default_factory=dict)

    def run(self) -> np.ndarray:
        """The frames (T, H, W) of a synthetic run."""
        if self.params is None:
            raise ValueError(f"{self.path}: only synthetic samples render frames")
        return render_run(self.params, self.size, self.frames)

    def minip(self) -> np.ndarray:
        """The MinIP (H, W), contrast dark, in the stored type."""
        if self.params is not None:
            return self.run().min(axis=0)
        assert self.path is not None
        if self.path.suffix.lower() in PNG_SUFFIXES:
            with Image.open(self.path) as img:
                grey = img if img.mode in ("L", "I;16", "I") else img.convert("L")
                return np.array(grey)
        from ai.quality.transforms import minip_from_file

        return minip_from_file(self.path)[0]


def load_csv(path: Path | str, label_names: list[str] | None = None) -> list[QualitySample]:
    """Samples from a label CSV (see the module docstring).

    Parameters
    ----------
    path : Path
        The CSV file, or a folder holding ``labels.csv``.
    label_names : list of str, optional
        Keep only these label columns (default: every column but ``path``).

    Raises
    ------
    ValueError
        No ``path`` column, or a listed file does not exist (the row is named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    samples = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: the first column must be 'path'")
        columns = [c for c in reader.fieldnames if c != "path"]
        if label_names is not None:
            columns = [c for c in columns if c in label_names]
        for lineno, row in enumerate(reader, start=2):
            file = Path(row["path"])
            if not file.is_absolute():
                file = path.parent / file
            if not file.is_file():
                raise ValueError(f"{path}:{lineno}: {file} does not exist")
            labels = {c: row[c].strip().lower() for c in columns if (row.get(c) or "").strip()}
            samples.append(QualitySample(labels=labels, path=file))
    logger.info("loaded %d rated MinIPs from %s", len(samples), path)
    return samples
