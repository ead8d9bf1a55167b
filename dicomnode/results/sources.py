"""The source images a job's findings refer to: headers only, checked before anything is built.

Results are built from headers read with ``stop_before_pixels`` (a 2 GB run costs a
few kilobytes here).  :class:`SourceIndex` resolves a finding's
:class:`~ai.core.contract.ImageReference` to its header and checks what highdicom
does not: that the instance is one of the sources and that every frame number is
within ``NumberOfFrames`` (highdicom only rejects numbers below 1).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from ai.core.contract import ImageReference

logger = logging.getLogger(__name__)


def read_header(path: str | Path) -> Dataset:
    """A source instance's header (everything before Pixel Data)."""
    return pydicom.dcmread(path, stop_before_pixels=True)


class SourceIndex:
    """Source headers by SOP Instance UID, in the order given.

    Parameters
    ----------
    datasets : iterable of Dataset
        Headers of the job's input instances, all of one study (the study the
        results are written into is the first one's).

    Raises
    ------
    ValueError
        When no dataset is given or they span several studies.
    """

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self._by_uid: dict[str, Dataset] = {}
        for ds in datasets:
            self._by_uid.setdefault(str(ds.SOPInstanceUID), ds)
        if not self._by_uid:
            raise ValueError("sources: at least one source header is needed")
        studies = {str(ds.StudyInstanceUID) for ds in self._by_uid.values()}
        if len(studies) != 1:
            # Results live in the study they describe (results-notes §7); a job never
            # spans studies, so several here is a caller bug, not data to report on.
            raise ValueError(f"sources: StudyInstanceUID differs between sources: {sorted(studies)}")
        self.study_instance_uid = studies.pop()

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self._by_uid.values())

    def __len__(self) -> int:
        return len(self._by_uid)

    @property
    def sop_instance_uids(self) -> list[str]:
        return list(self._by_uid)

    @property
    def first(self) -> Dataset:
        return next(iter(self._by_uid.values()))

    def get(self, ref: ImageReference) -> Dataset:
        """The header ``ref`` points at, with its SOP Class and frame numbers checked."""
        ds = self._by_uid.get(ref.sop_instance_uid)
        if ds is None:
            raise ValueError(
                f"ImageReference {ref.sop_instance_uid}: not among the job's source instances"
            )
        if str(ds.SOPClassUID) != ref.sop_class_uid:
            raise ValueError(
                f"ImageReference {ref.sop_instance_uid}: SOP Class {ref.sop_class_uid} differs "
                f"from the instance's {ds.SOPClassUID}"
            )
        check_frames(ds, ref.frame_numbers)
        return ds

    def resolve(self, refs: Sequence[ImageReference]) -> list[Dataset]:
        """Headers of ``refs``, each checked, duplicates dropped, order kept."""
        seen: dict[str, Dataset] = {}
        for ref in refs:
            seen.setdefault(ref.sop_instance_uid, self.get(ref))
        return list(seen.values())


def check_frames(ds: Dataset, frame_numbers: Sequence[int]) -> None:
    """Raise ``ValueError`` unless every frame number is within 1..NumberOfFrames."""
    if not frame_numbers:
        return
    count = int(ds.get("NumberOfFrames") or 1)
    bad = [n for n in frame_numbers if not 1 <= int(n) <= count]
    if bad:
        raise ValueError(
            f"ImageReference {ds.SOPInstanceUID}: frame numbers {bad} outside 1..{count} "
            "(NumberOfFrames; frame numbers are 1-based)"
        )


def library_entry(ds: Dataset) -> Dataset:
    """The header to hand highdicom's Image Library for ``ds``.

    highdicom writes TID 1603/1604 descriptors from PatientOrientation and
    ImagerPixelSpacing (projection images) or PixelSpacing, orientation and position
    (cross-sectional ones) and fails when they are missing: real XA has an empty
    PatientOrientation (Type 2C), results-notes E1.  For such sources the entry is
    built from a copy with ``Modality = "OT"``, which skips the descriptors; the entry
    still says XA because its modality code comes from the SOP Class.
    """
    try:
        hd.sr.ImageLibraryEntryDescriptors(ds)
        return ds
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        logger.debug("image library entry without descriptors for %s: %s", ds.SOPInstanceUID, exc)
    plain = copy.deepcopy(ds)
    plain.Modality = "OT"
    return plain
