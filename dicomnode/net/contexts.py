"""Presentation contexts the node accepts: Verification, and every storage SOP class
pynetdicom knows with every transfer syntax it knows (data is stored as received,
so compressed syntaxes need no codec on the receive path)."""
from __future__ import annotations

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

#: Verification (C-ECHO).
VERIFICATION_UID = str(Verification)


def storage_contexts() -> list[PresentationContext]:
    """One context per storage SOP class, each offering all known transfer syntaxes."""
    return [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]


def storage_sop_classes() -> list[str]:
    """The storage SOP Class UIDs the receiver accepts."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
