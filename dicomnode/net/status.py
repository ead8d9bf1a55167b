"""Named DIMSE status codes (PS3.4 Annex B, PS3.7 C.4.2); never bare hex in logic."""
from __future__ import annotations

SUCCESS = 0x0000
#: Storage warnings: coercion of data elements, elements discarded, dataset mismatch.
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_MISMATCH = 0xB007
WARNINGS = frozenset({WARNING_COERCION, WARNING_ELEMENTS_DISCARDED, WARNING_DATASET_MISMATCH})

#: Refused: out of resources (disk full, spool unwritable, index unavailable).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP Class.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand (unparseable, missing or invalid UIDs).
CANNOT_UNDERSTAND = 0xC000
#: Failure: processing failure (an unexpected error; logged with a traceback).
PROCESSING_FAILURE = 0x0110
#: Refused: SOP class not supported.
SOP_CLASS_NOT_SUPPORTED = 0x0122

NAMES = {
    SUCCESS: "Success",
    WARNING_COERCION: "Warning: coercion of data elements",
    WARNING_ELEMENTS_DISCARDED: "Warning: elements discarded",
    WARNING_DATASET_MISMATCH: "Warning: data set does not match SOP class",
    OUT_OF_RESOURCES: "Refused: out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP class",
    CANNOT_UNDERSTAND: "Error: cannot understand",
    PROCESSING_FAILURE: "Failure: processing failure",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
}


def is_success_or_warning(status: int) -> bool:
    """True for 0x0000 and the storage warnings that still mean the PACS kept the object."""
    return status == SUCCESS or status in WARNINGS


def describe(status: int) -> str:
    """``0xA700 (Refused: out of resources)``."""
    return f"0x{status:04X} ({NAMES.get(status, 'unknown')})"
