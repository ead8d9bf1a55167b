"""The 11 CCF-Net landmarks and the Tianchi tag vocabulary (methods-notes §3.3).

Landmark order is CCF-Net's ``config.identifications``: the five vertebrae first, then
the six discs.  Output channels, ground-truth arrays and metrics all use this order.
"""
from __future__ import annotations

from collections.abc import Sequence

VERTEBRA_IDS: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5")
DISC_IDS: tuple[str, ...] = ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
IDENTIFICATIONS: tuple[str, ...] = VERTEBRA_IDS + DISC_IDS
N_LANDMARKS = len(IDENTIFICATIONS)
N_VERTEBRAE = len(VERTEBRA_IDS)
N_DISCS = len(DISC_IDS)

#: Tianchi tags: vertebra v1 normal / v2 degeneration; disc v1 normal, v2 bulge,
#: v3 protrusion, v4 extrusion, v5 Schmorl's node (intravertebral herniation).
VERTEBRA_TAGS: tuple[str, ...] = ("v1", "v2")
DISC_TAGS: tuple[str, ...] = ("v1", "v2", "v3", "v4", "v5")
#: Disc morphology classes (one of them per disc); v5 is a separate yes/no flag.
DISC_MORPHOLOGY: tuple[str, ...] = ("v1", "v2", "v3", "v4")


def is_disc(index: int) -> bool:
    """True when landmark ``index`` (in :data:`IDENTIFICATIONS` order) is a disc."""
    return index >= N_VERTEBRAE


def split_tag(tag: str) -> list[str]:
    """The tags of a Tianchi tag string (``"v3,v5"`` → ``["v3", "v5"]``; empty → ``["v1"]``)."""
    parts = [t.strip().lower() for t in tag.split(",") if t.strip()]
    return parts or ["v1"]


def primary_tag(tag: str) -> str:
    """The first tag, the one the challenge's evaluator compares (``gt[:2]``)."""
    return split_tag(tag)[0]


def is_abnormal(tag: str) -> bool:
    """The binary class CCF-Net trains and its AUC scores: first tag other than ``v1``."""
    return primary_tag(tag) != "v1"


def disc_morphology(tag: str) -> int:
    """Index into :data:`DISC_MORPHOLOGY` of a disc tag, or -1 when it names none (``"v5"``)."""
    for part in split_tag(tag):
        if part in DISC_MORPHOLOGY:
            return DISC_MORPHOLOGY.index(part)
    return -1


def has_schmorl_node(tag: str) -> bool:
    """True when a disc tag carries ``v5``."""
    return "v5" in split_tag(tag)


def join_tags(tags: Sequence[str]) -> str:
    """Tianchi's comma-joined form."""
    return ",".join(tags)
