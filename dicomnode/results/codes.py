"""The project's code table (:mod:`ai.core.codes`) as highdicom and pydicom objects.

Modules speak :class:`ai.core.contract.Code`; highdicom wants
:class:`highdicom.sr.CodedConcept` and each object that uses a private code must
declare its scheme.  This is the only place that converts between the two.
"""
from __future__ import annotations

from collections.abc import Iterable

import highdicom as hd
from pydicom.dataset import Dataset

from ai.core import codes
from ai.core.contract import Code

__all__ = [
    "codes", "concept", "code_of", "coding_scheme_items", "declare_schemes", "private_schemes_in",
]


def concept(code: Code) -> hd.sr.CodedConcept:
    """``code`` as a highdicom CodedConcept (Code Value, Scheme Designator, Meaning)."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def code_of(item: Dataset) -> Code:
    """A coded-entry item (CodedConcept or a Code Sequence item) back as a :class:`Code`."""
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return Code(str(value), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def private_schemes_in(dataset: Dataset) -> set[str]:
    """Designators of local (``99…``) coding schemes used anywhere in ``dataset``."""
    found: set[str] = set()
    for elem in dataset.iterall():
        if elem.keyword == "CodingSchemeDesignator" and str(elem.value).startswith("99"):
            found.add(str(elem.value))
    return found


def coding_scheme_items(
    designators: Iterable[str],
) -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """Coding Scheme Identification Sequence items for the private schemes used.

    Only ``99DICOMNODE`` is ours; an unknown local designator raises, because an
    undeclared private scheme makes codes meaningless outside this node.
    """
    items = []
    for designator in sorted(set(designators)):
        if designator != codes.PRIVATE_SCHEME.designator:
            raise ValueError(f"coding scheme {designator!r} is not declared in ai.core.codes")
        scheme = codes.PRIVATE_SCHEME
        items.append(
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=scheme.designator,
                name=scheme.name,
                version=scheme.version,
                responsible_organization=scheme.responsible_organization,
            )
        )
    return items


def declare_schemes(dataset: Dataset) -> None:
    """Set (0008,0110) on an already built object from the private codes it contains.

    For objects whose highdicom constructor takes no ``coding_schemes`` (KOS, SC).
    """
    designators = private_schemes_in(dataset)
    if designators:
        dataset.CodingSchemeIdentificationSequence = coding_scheme_items(designators)
