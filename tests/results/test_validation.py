"""Every object the node emits, for every module kind, through the four validators.

Gate (results.md): ``dciodvfy`` no ``Error``; PixelMed ``DicomSRValidator`` no
``Error`` on SR and KOS; ``dsrdump -v`` no ``E:``; ``dcentvfy`` over each study
(sources + results) no ``Error``.  Warnings must match the known list below, each
with its reason, so a new kind of warning fails the test too.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import validators
from results.conftest import Built

pytestmark = pytest.mark.slow

KINDS = ["quality", "mtici", "quality3d", "keyframes", "spine"]

KNOWN_WARNINGS = {
    "dciodvfy": [
        # W3: inherent to private codes; CodingSchemeIdentificationSequence does not silence it.
        r"Unrecognized defined term <99DICOMNODE> for value 1 of attribute <Coding Scheme Designator>",
    ],
    "DicomSRValidator": [
        # W2: PixelMed 2022's TID 1501/1410 tables have no row for qualitative evaluations
        # (standard codes too), nor for the geometric purpose; an evaluation's own certainty
        # child is therefore outside the template as well.
        r'/CODE \([^,]+,[^,]+,".*"\)(/NUM \(111012,DCM,"Certainty of Finding"\))?: '
        r"Content Item not in template$",
        # The Comment (121106) text of an image-level group (its Tracking Identifier
        # text): OHIF 3.13 prints it as the first line of the group's label, and
        # PixelMed 2022's TID 1501 has no row for it.  Added with issue #13.
        r'/CONTAINER \(125007,DCM,"Measurement Group"\)/TEXT \(121106,DCM,"Comment"\): '
        r"Content Item not in template$",
    ],
    "dsrdump": [
        # W4: informational; the UTF-8 character set is inherited from the source.
        r"W: The VR checker does not support this Specific Character Set: ISO_IR 192",
        r"W: Check for template constraints not yet supported",
    ],
    "dcentvfy": [
        # W6: dicom3tools models AccessionNumber at series level for some IODs.
        r"Different information entities for attribute - Element=<AccessionNumber>",
    ],
}


def _files(built: dict[str, Built], *kinds: str) -> list[tuple[str, str, Path]]:
    return [(name, kind, path) for name, b in built.items() for kind in kinds
            for _, path in b.of_kind(kind)]


@pytest.fixture(scope="module")
def pixelmed(all_results: dict[str, Built]) -> dict[str, validators.Report]:
    """PixelMed over every SR and KOS, in one JVM (about 10 s a file)."""
    return validators.pixelmed_sr([p for _, _, p in _files(all_results, "SR", "KO")])


@pytest.fixture(scope="module")
def counts() -> Counter[tuple[str, str, str]]:
    """(tool, object kind, E|W) → count, printed at the end for the closing note."""
    tally: Counter[tuple[str, str, str]] = Counter()
    yield tally
    print("\nvalidator counts (tool, kind, E/W):")
    for key in sorted(tally):
        print("  ", *key, tally[key])


def _check(report: validators.Report, kind: str, counts: Counter) -> None:
    counts[(report.tool, kind, "E")] += len(report.errors)
    counts[(report.tool, kind, "W")] += len(report.warnings)
    assert report.errors == [], str(report)
    assert report.unexpected_warnings(KNOWN_WARNINGS[report.tool]) == [], str(report)


def test_each_module_kind_yields_the_expected_objects(all_results: dict[str, Built]) -> None:
    kinds = {name: sorted(o.kind for o in b.objects) for name, b in all_results.items()}
    assert kinds == {
        "quality": ["SC", "SR", "SR"],  # the TID 1500 SR and its summary
        "mtici": ["SC", "SC", "SR", "SR"],
        "quality3d": ["SC", "SR"],
        "keyframes": ["KO", "SC", "SR", "SR"],
        "spine": ["PR", "SC", "SR"],
    }


@pytest.mark.parametrize("name", KINDS)
def test_dciodvfy_finds_no_error_in_any_object(all_results: dict[str, Built], name: str,
                                               counts: Counter) -> None:
    for obj in all_results[name].objects:
        _check(validators.dciodvfy(all_results[name].files[obj.sop_instance_uid]), obj.kind, counts)


@pytest.mark.parametrize("name", KINDS)
def test_dsrdump_finds_no_error_in_sr_and_kos(all_results: dict[str, Built], name: str,
                                              counts: Counter) -> None:
    for kind in ("SR", "KO"):
        for _, path in all_results[name].of_kind(kind):
            _check(validators.dsrdump(path), kind, counts)


@pytest.mark.parametrize("name", KINDS)
def test_pixelmed_finds_no_error_in_sr_and_kos(all_results: dict[str, Built], name: str,
                                               pixelmed: dict[str, validators.Report],
                                               counts: Counter) -> None:
    checked = 0
    for kind in ("SR", "KO"):
        for _, path in all_results[name].of_kind(kind):
            report = pixelmed[str(path)]
            # PixelMed says nothing at all when it cannot find the root template.
            assert "Root Template Validation Complete" in report.output, str(report)
            _check(report, kind, counts)
            checked += 1
    assert checked >= 1


def test_dcentvfy_finds_no_error_in_any_study(all_results: dict[str, Built], counts: Counter) -> None:
    studies: dict[str, list[Path]] = {}
    for built in all_results.values():
        files = studies.setdefault(built.study_instance_uid, [])
        files.extend(p for p in built.scenario.paths if p not in files)
        files.extend(built.files.values())
    assert len(studies) == 4  # quality and mtici share the DSA study
    for files in studies.values():
        _check(validators.dcentvfy(files), "study", counts)
