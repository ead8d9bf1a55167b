"""Deterministic result UIDs under the node's UID root.

A retried job must re-create the very objects it made before (same SOP Instance
UIDs), so the PACS keeps one copy instead of duplicates; a job on other inputs, or a
newer model, must make new ones.  Every UID here is therefore a hash of what
identifies the object (study, the input instances, module, model version, object
kind, index) under ``node.uid_root``: :func:`pydicom.uid.generate_uid` with
``entropy_srcs`` hashes them with SHA-512 and keeps as many decimal digits as fit in
64 characters, which is a valid UID by PS3.5 §9.1 (digits and dots, no leading zero).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import generate_uid

#: Separates the parts hashed into one UID, so ("ab", "c") and ("a", "bc") differ.
_SEP = "\x1f"


def derive_uid(root: str, *parts: str) -> str:
    """A UID under ``root`` that depends only on ``parts``.

    Parameters
    ----------
    root : str
        The node's UID root, ending in ``"."`` (``node.uid_root``, at most 40 characters).
    *parts : str
        What identifies the object; the same parts give the same UID.

    Returns
    -------
    str
        At most 64 characters, valid per PS3.5 §9.1.
    """
    if not root.endswith("."):
        raise ValueError(f"uid_root {root!r} must end with '.'")
    return str(generate_uid(prefix=root, entropy_srcs=[_SEP.join(parts)]))


def device_uid(root: str, aetitle: str) -> str:
    """The node's Device Observer UID (TID 1004): stable per installation (root, AE title)."""
    return derive_uid(root, "device-observer", aetitle.strip())


@dataclass(frozen=True)
class ResultIdentity:
    """What a job's result objects are derived from; :meth:`series_uid` and :meth:`sop_uid`.

    Parameters
    ----------
    root : str
        ``node.uid_root``.
    study_instance_uid : str
        The study the results belong to.
    inputs : tuple of str
        SOP Instance UIDs of the input instances (order does not matter).
    module, model_version : str
        Which module and model version made the findings.
    salt : str
        Anything else that must give new objects: the SOP Instance UIDs of the
        documents a re-run supersedes, so a superseding SR never reuses its
        predecessor's UID even when the inputs did not change.
    """

    root: str
    study_instance_uid: str
    inputs: tuple[str, ...]
    module: str
    model_version: str
    salt: str = ""

    @classmethod
    def of(
        cls, root: str, study_instance_uid: str, inputs: Iterable[str], module: str,
        model_version: str, salt: str = "",
    ) -> ResultIdentity:
        """Build one with the inputs sorted and de-duplicated."""
        return cls(root, study_instance_uid, tuple(sorted(set(inputs))), module, model_version,
                   salt)

    def _parts(self, kind: str) -> list[str]:
        return [self.study_instance_uid, ",".join(self.inputs), self.module, self.model_version,
                kind, self.salt]

    def series_uid(self, kind: str) -> str:
        """Series Instance UID of the new series holding objects of ``kind``."""
        return derive_uid(self.root, *self._parts(kind), "series")

    def sop_uid(self, kind: str, index: int) -> str:
        """SOP Instance UID of object ``index`` of ``kind``."""
        return derive_uid(self.root, *self._parts(kind), "instance", str(index))

    def tracking_uid(self, kind: str, index: int, tracking_id: str) -> str:
        """Tracking Unique Identifier (DCM 112040) of one finding."""
        return derive_uid(self.root, *self._parts(kind), "tracking", str(index), tracking_id)
