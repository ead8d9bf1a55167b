"""The receiver's supported contexts: copied per association without copying every UID."""
from __future__ import annotations

import copy

from pynetdicom import AE

from dicomnode.net.contexts import CheapCopyContext, cheap_copies, storage_contexts


def test_a_copied_context_negotiates_alone_but_shares_its_immutable_uids() -> None:
    originals = storage_contexts()
    server_side = cheap_copies(originals)
    per_association = copy.deepcopy(server_side)  # what pynetdicom does for each association
    assert all(isinstance(cx, CheapCopyContext) for cx in per_association)
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in per_association] == \
        [(cx.abstract_syntax, cx.transfer_syntax) for cx in originals]
    first, source = per_association[0], server_side[0]
    assert first.transfer_syntax[0] is source.transfer_syntax[0]  # shared, not copied
    first.context_id = 7
    first.transfer_syntax.append("1.2.3")
    first.result = 0
    assert (source.context_id, source.result) == (None, None)
    assert "1.2.3" not in source.transfer_syntax and "1.2.3" not in originals[0].transfer_syntax


def test_an_association_negotiated_from_cheap_copies_accepts_what_was_proposed() -> None:
    scp = AE(ae_title="SCP")
    server = scp.start_server(("127.0.0.1", 0), block=False, contexts=cheap_copies(storage_contexts()))
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"])
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        try:
            assert assoc.is_established
            [accepted] = assoc.accepted_contexts
            # Our preference: the encapsulated syntax the sender holds, not a conversion.
            assert (accepted.abstract_syntax, accepted.transfer_syntax[0]) == \
                ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.4.50")
        finally:
            assoc.release()
    finally:
        server.shutdown()
