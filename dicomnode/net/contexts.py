"""Presentation contexts the node accepts: Verification, and every storage SOP class
pynetdicom knows with every transfer syntax it knows (data is stored as received,
so compressed syntaxes need no codec on the receive path)."""
from __future__ import annotations

import copy
from typing import Any

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

#: Verification (C-ECHO).
VERIFICATION_UID = str(Verification)


def preferred_transfer_syntaxes() -> list[str]:
    """All known transfer syntaxes, encapsulated (compressed) ones first.

    pynetdicom chooses, per presentation context, the first syntax of *our* list
    that the requestor proposed.  Senders propose an encapsulated syntax only for
    data they already hold that way, usually with uncompressed fallbacks in the
    same context (dcmtk storescu does).  Preferring the uncompressed fallback would
    make the sender decompress (storescu without a codec then fails: "unable to
    convert dataset from 'JPEG Baseline'") and we would not store what was sent.
    """
    syntaxes = [UID(ts) for ts in ALL_TRANSFER_SYNTAXES]
    encapsulated = [ts for ts in syntaxes if ts.is_encapsulated]
    native = [ts for ts in syntaxes if not ts.is_encapsulated]
    return [str(ts) for ts in encapsulated + native]


def storage_contexts() -> list[PresentationContext]:
    """One context per storage SOP class, each offering all known transfer syntaxes."""
    syntaxes = preferred_transfer_syntaxes()
    return [build_context(str(cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts]


def storage_sop_classes() -> list[str]:
    """The storage SOP Class UIDs the receiver accepts."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


class CheapCopyContext(PresentationContext):
    """A supported context whose ``deepcopy`` copies its list, not each UID in it.

    pynetdicom deep-copies the server's supported contexts for every association it
    accepts: 170 storage SOP classes × 45 transfer syntaxes is 7650 ``UID`` objects,
    47 ms of CPU per association on a quiet machine (18% of the receiver's CPU with 8
    associations of 50 instances, under py-spy).  UIDs are immutable strings, so
    sharing them is safe; the list and the context's own fields are per copy.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> CheapCopyContext:
        new = copy.copy(self)
        new._transfer_syntax = list(self._transfer_syntax)
        return new


def cheap_copies(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """The same contexts as :class:`CheapCopyContext` objects (for ``start_server``)."""
    out: list[PresentationContext] = []
    for cx in contexts:
        new = CheapCopyContext.__new__(CheapCopyContext)
        new.__dict__.update(vars(cx))
        new._transfer_syntax = list(cx._transfer_syntax)
        out.append(new)
    return out
