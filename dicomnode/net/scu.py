"""The C-STORE sender: one association to a destination, files sent in order, each status kept.

:func:`send_files` is what the outbox calls.  It proposes, per SOP class, the file's
own transfer syntax plus both uncompressed little-endian ones, sends each file by
path (pynetdicom streams the encoded data set; nothing is decoded), and yields one
:class:`StoreOutcome` per file as soon as its response arrives, so the caller can
record it before the next file goes out.  A peer that is down or refuses the
association raises :class:`AssociationFailed`; one that aborts midway yields
failures (status ``None``) for the files that were not sent.

Storage Commitment (PS3.4 Annex J) is optional per destination:
:func:`request_commitment` sends the N-ACTION; the peer answers later with an
N-EVENT-REPORT on an association *it* opens to our receiver (Orthanc does so), which
:func:`commitment_report_handler` turns into a callback with the committed and
failed SOP Instance UIDs.
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dicomnode.config import Destination, TLSSettings
from dicomnode.errors import DicomNodeError
from dicomnode.net import status as st

logger = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: pynetdicom proposes at most 128 presentation contexts per association.
MAX_CONTEXTS = 128


class AssociationFailed(DicomNodeError):
    """The destination could not be reached, refused the association, or had no context."""


@dataclass(frozen=True)
class StoreOutcome:
    """The answer to one C-STORE: ``status`` None when no response came."""

    path: Path
    sop_instance_uid: str
    status: int | None
    error: str = ""

    @property
    def delivered(self) -> bool:
        """Success, or a storage warning (the peer kept the object)."""
        return self.status is not None and st.is_success_or_warning(self.status)

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no response"
        return st.describe(self.status)


@dataclass(frozen=True)
class Link:
    """How to talk to peers: our AE title, timeouts, TLS material."""

    calling_ae: str
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    connection_timeout: float = 10.0
    max_pdu: int = 131072
    tls: TLSSettings | None = None

    @classmethod
    def from_settings(cls, settings: object) -> Link:
        """From :class:`dicomnode.config.Settings` (``node`` timeouts, ``tls`` material)."""
        node = settings.node  # type: ignore[attr-defined]
        return cls(node.aetitle, node.acse_timeout, node.dimse_timeout, node.network_timeout,
                   max_pdu=node.max_pdu_size, tls=settings.tls)  # type: ignore[attr-defined]


def _ssl_context(tls: TLSSettings | None, destination: Destination) -> tuple[ssl.SSLContext, str]:
    """A client context: verify the peer against ``tls.ca``; present our cert if we have one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(tls.ca) if tls and tls.ca else None)
    if tls is not None and tls.cert and tls.key:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context, destination.host


def _ae(link: Link) -> AE:
    ae = AE(ae_title=link.calling_ae)
    ae.acse_timeout = link.acse_timeout
    ae.dimse_timeout = link.dimse_timeout
    ae.network_timeout = link.network_timeout
    ae.connection_timeout = link.connection_timeout
    ae.maximum_pdu_size = link.max_pdu
    return ae


def _associate(ae: AE, destination: Destination, link: Link) -> Association:
    tls_args = _ssl_context(link.tls, destination) if destination.tls else None
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.aetitle,
                             tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        raise AssociationFailed(f"{destination.name}: {exc}") from None
    if not assoc.is_established:
        # pynetdicom reports a refused TCP connection as an abort; only a rejection
        # (A-ASSOCIATE-RJ: unknown called AE, no context …) is told apart.
        reason = ("association rejected" if assoc.is_rejected
                  else "no association (connection refused, aborted or timed out)")
        raise AssociationFailed(
            f"{destination.name} ({destination.aetitle}@{destination.host}:{destination.port}): {reason}"
        )
    return assoc


def _meta(path: Path) -> tuple[str, str, str]:
    """(SOP Class, SOP Instance, Transfer Syntax) from the file meta information."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return (str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID))


def send_files(destination: Destination, paths: Sequence[Path], link: Link) -> Iterator[StoreOutcome]:
    """C-STORE ``paths`` to ``destination`` over one association, in order.

    Parameters
    ----------
    destination : Destination
        AE title, host, port, TLS switch.
    paths : sequence of Path
        Part-10 files.
    link : Link
        Our AE title, timeouts and TLS material.

    Yields
    ------
    StoreOutcome
        One per file, in order, as each response arrives.

    Raises
    ------
    AssociationFailed
        Before any file is sent: peer down, association refused, or no accepted
        context for the first file's SOP class.
    """
    files = [(Path(p), *_meta(Path(p))) for p in paths]
    ae = _ae(link)
    contexts: dict[str, list[str]] = {}
    for _, sop_class, _, syntax in files:
        wanted = contexts.setdefault(sop_class, [])
        for ts in (syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in wanted:
                wanted.append(ts)
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP classes in one batch; at most {MAX_CONTEXTS}")
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    assoc = _associate(ae, destination, link)
    try:
        for path, _sop_class, sop_uid, _ in files:
            if not assoc.is_established:
                yield StoreOutcome(path, sop_uid, None, "association lost before sending")
                continue
            try:
                rsp = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError) as exc:
                # No accepted context for this SOP class / syntax, or an unreadable file.
                yield StoreOutcome(path, sop_uid, None, f"not sent: {exc}")
                continue
            code = rsp.get("Status") if rsp is not None else None
            if code is None:
                yield StoreOutcome(path, sop_uid, None, "no response (association aborted or timed out)")
            else:
                yield StoreOutcome(path, sop_uid, int(code))
    finally:
        if assoc.is_established:
            assoc.release()


def echo(destination: Destination, link: Link) -> int:
    """C-ECHO ``destination``; the status, or raise :class:`AssociationFailed`."""
    ae = _ae(link)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = _associate(ae, destination, link)
    try:
        rsp = assoc.send_c_echo()
        code = rsp.get("Status") if rsp is not None else None
        if code is None:
            raise AssociationFailed(f"{destination.name}: no C-ECHO response")
        return int(code)
    finally:
        if assoc.is_established:
            assoc.release()


# ---------------------------------------------------------------------------
# Storage Commitment Push Model (PS3.4 Annex J)
# ---------------------------------------------------------------------------


def request_commitment(
    destination: Destination, transaction_uid: str, refs: Sequence[tuple[str, str]], link: Link,
) -> int:
    """Ask ``destination`` to commit to keeping ``refs`` ((SOP Class, SOP Instance) pairs).

    Returns the N-ACTION status (0x0000 means the request was accepted, not that the
    objects are committed: that comes in the N-EVENT-REPORT).
    """
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    ae = _ae(link)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = _associate(ae, destination, link)
    try:
        status, _reply = assoc.send_n_action(ds, 1, StorageCommitmentPushModel,
                                             STORAGE_COMMITMENT_INSTANCE)
        code = status.get("Status") if status is not None else None
        if code is None:
            raise AssociationFailed(f"{destination.name}: no N-ACTION response")
        return int(code)
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass(frozen=True)
class CommitmentReport:
    """What an N-EVENT-REPORT (event 1 all committed, 2 some failed) said."""

    calling_ae: str
    transaction_uid: str
    committed: tuple[str, ...]
    failed: tuple[str, ...]


def parse_commitment_report(calling_ae: str, dataset: Dataset) -> CommitmentReport:
    """The SOP Instance UIDs committed and failed in one report."""

    def uids(keyword: str) -> tuple[str, ...]:
        return tuple(str(i.ReferencedSOPInstanceUID) for i in dataset.get(keyword, []))

    return CommitmentReport(calling_ae.strip(), str(dataset.get("TransactionUID", "")),
                            uids("ReferencedSOPSequence"), uids("FailedSOPSequence"))


def commitment_report_handler(
    on_report: Callable[[CommitmentReport], None],
) -> tuple[evt.EventType, Callable[[evt.Event], tuple[int, Dataset | None]]]:
    """A pynetdicom ``EVT_N_EVENT_REPORT`` handler for the receiver's AE.

    ``on_report`` records the result (the outbox's ``record_commitment``); whatever
    it raises is logged and answered with Processing Failure, never propagated into
    pynetdicom (STYLE.md: nothing raises out of a handler).
    """

    def handle(event: evt.Event) -> tuple[int, Dataset | None]:
        calling = event.assoc.requestor.ae_title
        try:
            report = parse_commitment_report(calling, event.event_information)
            on_report(report)
        except Exception as exc:  # noqa: BLE001 - a handler must answer, not raise
            logger.error("storage commitment report from %s: %s", calling, exc)
            return st.PROCESSING_FAILURE, None
        logger.info("storage commitment report from %s: %d committed, %d failed",
                    calling, len(report.committed), len(report.failed))
        return st.SUCCESS, None

    return evt.EVT_N_EVENT_REPORT, handle
