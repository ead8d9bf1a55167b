"""The label schema: which properties the heads predict and their classes.

The schema is config (stored in every model version's ``metadata.json``), so a
site can train the paper's real nine labels from its CSV without code changes;
each label name must have a :class:`~ai.core.codes.LabelSchema` in
:data:`ai.core.codes.QUALITY_LABELS` (the one code table) for its SR codes.

Class order matters: for a binary label the second class is the positive one its
ROC-AUC is computed for.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ai.core.codes import QUALITY_LABELS, LabelSchema

#: The labels shipped with the bundled model (the paper's public ones plus placeholders
#: with exact synthetic ground truth for the five the paper does not name).
DEFAULT_LABELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contrast", ("absent", "present")),
    ("projection", ("ap", "lateral", "oblique")),
    ("skull", ("complete", "truncated")),
    ("motion", ("none", "mild", "severe")),
    ("shutter", ("absent", "present")),
    ("device", ("absent", "present")),
    ("text", ("absent", "present")),
    ("noise", ("mild", "severe")),
    ("suitable", ("no", "yes")),
)

#: Label whose positive class opens the gate other modules read (``Findings.gate``).
GATE_LABEL = "suitable"
GATE_CLASS = "yes"


def default_schema() -> list[dict[str, Any]]:
    """The default schema as config: ``[{"name": …, "classes": [...]}, …]``."""
    return [{"name": name, "classes": list(classes)} for name, classes in DEFAULT_LABELS]


def schema_from_config(config: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, classes)`` pairs from a module config's ``labels`` list."""
    labels = config.get("labels") or default_schema()
    return [(str(item["name"]), tuple(str(c) for c in item["classes"])) for item in labels]


def codes_for(name: str, classes: Sequence[str]) -> LabelSchema:
    """The code table entry of label ``name``, checked to code every class.

    Raises
    ------
    KeyError
        The label or one of its classes has no code in :data:`QUALITY_LABELS`.
    """
    if name not in QUALITY_LABELS:
        raise KeyError(f"quality label {name!r} has no codes in ai.core.codes.QUALITY_LABELS")
    schema = QUALITY_LABELS[name]
    for cls in classes:
        schema.value(cls)
    return schema


def suitable_rule(labels: Mapping[str, str]) -> str:
    """Synthetic ground truth of "suitable for downstream AI" from the other labels.

    A vessel-segmentation pipeline (CAVE in the paper) needs opacified vessels, no
    severe motion and a usable signal-to-noise ratio; projection, shutters, text,
    devices and skull coverage do not stop it.
    """
    ok = (labels["contrast"] == "present" and labels["motion"] != "severe"
          and labels["noise"] == "mild")
    return "yes" if ok else "no"
