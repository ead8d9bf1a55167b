"""Findings ↔ JSON, so a job's findings live in the index and feed dependent modules.

A finished job keeps its :class:`~ai.core.contract.Findings` in ``Job.summary``;
a module that depends on it (``mtici`` after ``quality``) gets them back as the same
frozen dataclasses in ``select(study, prior)``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ai.core.contract import (
    Code,
    Evaluation,
    Finding,
    Findings,
    ImageReference,
    Measurement,
    Point,
)


def jsonable(value: Any) -> Any:
    """Plain JSON types from dataclasses, tuples and numpy scalars/arrays (NaN → None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def findings_to_json(findings: Findings) -> dict[str, Any]:
    """A :class:`Findings` as JSON-ready data."""
    out = jsonable(findings)
    assert isinstance(out, dict)
    return out


def _code(d: Mapping[str, Any] | None) -> Code | None:
    return None if d is None else Code(d["value"], d["scheme"], d["meaning"])


def _ref(d: Mapping[str, Any]) -> ImageReference:
    return ImageReference(d["sop_instance_uid"], d["sop_class_uid"],
                          tuple(d.get("frame_numbers") or ()))


def _point(d: Mapping[str, Any] | None) -> Point | None:
    if d is None:
        return None
    patient = d.get("patient")
    return Point(d["column"], d["row"], tuple(patient) if patient is not None else None)


def findings_from_json(d: Mapping[str, Any]) -> Findings:
    """The :class:`Findings` that :func:`findings_to_json` wrote."""
    items = []
    for f in d.get("findings", []):
        code = _code(f["finding"])
        assert code is not None
        items.append(Finding(
            tracking_id=f["tracking_id"], finding=code,
            references=tuple(_ref(r) for r in f.get("references", [])),
            evaluations=tuple(Evaluation(_code(e["concept"]), _code(e["value"]),  # type: ignore[arg-type]
                                         e.get("confidence")) for e in f.get("evaluations", [])),
            measurements=tuple(Measurement(_code(m["concept"]), m["value"], _code(m["unit"]),  # type: ignore[arg-type]
                                           m.get("confidence"), tuple(m.get("frame_numbers") or ()))
                               for m in f.get("measurements", [])),
            confidence=f.get("confidence"), finding_site=_code(f.get("finding_site")),
            point=_point(f.get("point")),
        ))
    return Findings(
        module=d["module"], model_version=d["model_version"], model_sha256=d["model_sha256"],
        findings=tuple(items), summary=d.get("summary", ""),
        key_frames=tuple(_ref(r) for r in d.get("key_frames", [])),
        gate=dict(d.get("gate") or {}), extra=dict(d.get("extra") or {}),
    )
