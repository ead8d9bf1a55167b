"""The code table: every code fits its VRs, private ones are declared and unique, standard
ones exist in the DICOM dictionaries pydicom ships (PS3.16)."""
from __future__ import annotations

import re
from collections import Counter

import pytest
from pydicom.sr._concepts_dict import concepts

from ai.core import codes

ALL = list(codes.all_codes())
#: UCUM annotations and units that PS3.16 does not enumerate (UCUM is a grammar).
UCUM_GRAMMAR = {"{frame}", "s"}


def test_the_table_covers_every_module() -> None:
    assert len(ALL) > 90
    for schema in (*codes.QUALITY_LABELS.values(), codes.MTICI_GRADES, codes.MTICI_SUCCESS,
                   codes.VERTEBRA_GRADES, codes.DISC_GRADES):
        assert schema.values
    assert set(codes.KEYFRAME_CONCEPTS) == {"start", "apex", "end"}
    assert len(codes.VERTEBRAE) + len(codes.DISCS) >= 11


def test_private_codes_are_short_uppercase_unique_and_in_the_declared_scheme() -> None:
    private = [c for c in ALL if codes.is_private(c)]
    assert {c.scheme for c in private} == {codes.PRIVATE_SCHEME.designator} == {"99DICOMNODE"}
    assert len(codes.PRIVATE_SCHEME.designator) <= 16
    for code in private:
        assert re.fullmatch(r"[A-Z0-9][A-Z0-9-]{0,15}", code.value), code
    duplicates = [v for v, n in Counter(c.value for c in private).items() if n > 1]
    assert duplicates == []


def test_standard_codes_exist_in_the_dicom_dictionary() -> None:
    missing = []
    for code in ALL:
        if codes.is_private(code) or (code.scheme == "UCUM" and code.value in UCUM_GRAMMAR):
            continue
        known = {value for entry in concepts[code.scheme].values() for value in entry}
        if code.value not in known:
            missing.append(code)
    assert missing == []


def test_an_unknown_class_names_the_label_and_the_known_classes() -> None:
    with pytest.raises(KeyError, match=r"mTICI reperfusion grade: no class '4' \(known: 0, 1"):
        codes.MTICI_GRADES.value("4")
