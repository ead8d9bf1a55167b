"""Typed exceptions, each mapped to the DICOM status it answers with.

Code inside the node raises early with the attribute named; the network handlers
catch :class:`DicomNodeError` and answer its :attr:`~DicomNodeError.status`.
"""
from __future__ import annotations

from dicomnode.net.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
)


class DicomNodeError(Exception):
    """Base class; ``status`` is the DIMSE status a C-STORE answers with."""

    status: int = PROCESSING_FAILURE


class ConfigError(DicomNodeError):
    """The configuration or a rules file is invalid; the message names the key."""


class InvalidDatasetError(DicomNodeError):
    """The dataset cannot be parsed or lacks a required attribute (0xC000)."""

    status = CANNOT_UNDERSTAND


class InvalidUIDError(InvalidDatasetError):
    """A UID breaks PS3.5 §9.1 (digits and dots, no leading zeros, ≤ 64 chars)."""


class SOPClassMismatchError(DicomNodeError):
    """The dataset's SOP Class differs from the presentation context's (0xA900)."""

    status = DATASET_DOES_NOT_MATCH_SOP_CLASS


class DuplicateConflictError(DicomNodeError):
    """Same SOP Instance UID with other bytes, and the policy is to reject (0xA900)."""

    status = DATASET_DOES_NOT_MATCH_SOP_CLASS


class OutOfResourcesError(DicomNodeError):
    """Disk full, spool unwritable or index unavailable (0xA700)."""

    status = OUT_OF_RESOURCES
