"""mTICI grades, the class groupings of each label mode and their codes.

CVFSNet (``Data/dataset.py``, ``__map_label``) reads the grade from the file name and
groups it three ways; the same groupings are used here so that a model trained on
AmTICIS and one trained on synthetic data mean the same thing by "class 2":

``"4class"`` (the method's default, ``fuse01=True``)
    0/1, 2a, 2b, 3
``"5class"``
    0, 1, 2a, 2b, 3
``"binary"``
    < 2b (unsuccessful), >= 2b (successful reperfusion)

No DICOM or SNOMED concept exists for mTICI (PS3.16 searched; SNOMED's TIMI grades are
coronary), so the codes are private (``99DICOMNODE``, ``ai.core.codes``).
"""
from __future__ import annotations

from ai.core import codes
from ai.core.contract import Code

#: Every grade a file name or a generator can carry, in order of reperfusion.
GRADES: tuple[str, ...] = ("0", "1", "2a", "2b", "2c", "3")

#: Class names per label mode.  2c (Almekhlafi 2014) is not in AmTICIS; it joins 2b,
#: the nearest class the method defines, and counts as successful reperfusion.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "4class": ("0/1", "2a", "2b", "3"),
    "5class": ("0", "1", "2a", "2b", "3"),
    "binary": ("<2b", ">=2b"),
}

_GRADE_TO_CLASS: dict[str, dict[str, int]] = {
    "4class": {"0": 0, "1": 0, "2a": 1, "2b": 2, "2c": 2, "3": 3},
    "5class": {"0": 0, "1": 1, "2a": 2, "2b": 3, "2c": 3, "3": 4},
    "binary": {"0": 0, "1": 0, "2a": 0, "2b": 1, "2c": 1, "3": 1},
}

#: Codes come from the node's one code table (results-notes §4.3).
MTICI = codes.MTICI
SUCCESSFUL_REPERFUSION = codes.SUCCESSFUL_REPERFUSION
YES, NO = codes.YES, codes.NO
CEREBRAL_ARTERY = codes.CEREBRAL_ARTERY


def grade_code(class_name: str) -> Code:
    """Value code of a 4- or 5-class class name (``"0/1"``, ``"2b"`` …)."""
    return codes.MTICI_GRADES.value(class_name)


def normalise_grade(text: str) -> str:
    """Canonical grade string (``"T2B"``, ``"2b"``, ``"TICI 2B"`` → ``"2b"``).

    Raises
    ------
    ValueError
        If ``text`` names no mTICI grade.
    """
    grade = text.strip().lower().removeprefix("mtici").removeprefix("tici").strip()
    grade = grade.removeprefix("t").strip()
    if grade not in GRADES:
        raise ValueError(f"not an mTICI grade: {text!r}")
    return grade


def class_index(grade: str, mode: str = "4class") -> int:
    """The class a grade belongs to in ``mode`` (``"4class"``, ``"5class"`` or ``"binary"``)."""
    try:
        return _GRADE_TO_CLASS[mode][normalise_grade(grade)]
    except KeyError:
        raise ValueError(f"unknown label mode {mode!r}; use one of {sorted(CLASS_NAMES)}") from None


def successful_classes(mode: str) -> tuple[int, ...]:
    """Indices of the classes that mean mTICI >= 2b in ``mode``."""
    return tuple(
        sorted({c for g, c in _GRADE_TO_CLASS[mode].items() if g in ("2b", "2c", "3")})
    )
