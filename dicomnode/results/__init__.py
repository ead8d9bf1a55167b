"""Results back to PACS: DICOM objects from a module's findings, and the outbox that sends them.

Entry points
------------
The job runner, after a module's ``predict`` and ``render``::

    from dicomnode.results import build_results, store_results

    objects = build_results(findings, images, sources, settings, predecessor=old_sr_headers)
    stored = store_results(db, settings.spool_dir, job.id, objects, destinations=["pacs"])

- :func:`~dicomnode.results.build.build_results` ``(findings, images, sources, settings,
  predecessor=None, *, options=None) -> list[ResultObject]`` builds, in delivery order,
  one RGB Secondary Capture per rendered image, one TID 1500 SR for image-level
  findings and one for point landmarks (never mixed: results-notes E4), a Key Object
  Selection when ``findings.key_frames`` is set, and, with ``BuildOptions(gsps=True)``,
  a GSPS with the landmarks.  ``sources`` are the case's input instances (headers or
  paths).  UIDs are derived from (study, inputs, module, model version, kind, index)
  under ``node.uid_root``, so a retried job rebuilds the same objects.  ``predecessor``
  (the SR headers of an earlier run) goes into Predecessor Documents Sequence and
  makes the new UIDs differ.
- :func:`~dicomnode.results.store.store_results` ``(db, spool, job_id, objects,
  destinations) -> list[StoredResult]`` writes the files into the spool (atomically),
  then in one transaction indexes them as instances of result series, adds ``Result``
  rows, sets ``superseded_by`` on what they replace, and queues one ``Delivery`` per
  destination.  Already stored objects (a retry) are left alone.

The scheduler, every few seconds::

    from dicomnode.results import deliver_due
    deliver_due(db, settings, settings.spool_dir)

- :func:`~dicomnode.results.outbox.deliver_due` ``(db, settings, spool_root, now=None)
  -> DeliveryReport`` C-STOREs every due pending delivery, one association per
  destination, in creation order; 0x0000 and the warnings 0xB000/0xB006/0xB007 count
  as delivered; anything else retries after ``delivery.retry_backoff_seconds``
  (capped at the last value), all state in the index so restarts lose nothing.
  With ``Destination.storage_commitment`` it also sends an N-ACTION; the receiver
  passes the peer's N-EVENT-REPORT to :func:`~dicomnode.results.outbox.record_commitment`
  (handler: :func:`dicomnode.net.scu.commitment_report_handler`).

``dicomnode status`` and ``dicomnode jobs show``:
:func:`~dicomnode.results.outbox.pending_summary` ``(db)`` (one line per destination)
and :func:`~dicomnode.results.outbox.pending_deliveries` ``(db, job_id=…)`` (each row
with its reason and next attempt).

Reading an SR back: :func:`~dicomnode.results.srread.read_findings`.
All codes: :mod:`ai.core.codes` (adapted for highdicom in :mod:`dicomnode.results.codes`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomnode.results.build import BuildOptions, ResultObject, build_results
    from dicomnode.results.outbox import (
        DeliveryReport,
        deliver_due,
        pending_deliveries,
        pending_summary,
        record_commitment,
    )
    from dicomnode.results.srread import read_findings
    from dicomnode.results.store import StoredResult, store_results

#: Where each public name lives.  Imported on first use (PEP 562): the receiving
#: process records Storage Commitment reports through the outbox and must not pay for
#: highdicom (~30 MB), which only building objects needs.
_WHERE = {
    "BuildOptions": "build", "ResultObject": "build", "build_results": "build",
    "DeliveryReport": "outbox", "deliver_due": "outbox", "pending_deliveries": "outbox",
    "pending_summary": "outbox", "record_commitment": "outbox",
    "read_findings": "srread", "StoredResult": "store", "store_results": "store",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"dicomnode.results.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dicomnode.results' has no attribute {name!r}")


__all__ = [
    "BuildOptions",
    "DeliveryReport",
    "ResultObject",
    "StoredResult",
    "build_results",
    "deliver_due",
    "pending_deliveries",
    "pending_summary",
    "read_findings",
    "record_commitment",
    "store_results",
]
