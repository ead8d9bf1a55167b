"""Ingest: a received data set in a temporary file → durable spool file + committed index row.

:meth:`Ingestor.ingest` is the whole contract of a C-STORE success: it returns only
after the bytes are in their final spool place (fsync'd, renamed, directory
fsync'd) and the row is committed.  Anything else raises a
:class:`~dicomnode.errors.DicomNodeError` whose ``status`` the handler answers.

Order matters for crash safety: file first, then index.  A crash between the two
leaves an unindexed file (harmless; the sender got no success and sends again),
never an index row that points at a missing or partial file.

Memory stays bounded whatever was sent: :class:`HeaderScan` walks the element
headers first and refuses a data set whose eagerly parsed part (small values,
whole sequences) exceeds :data:`HEADER_MEMORY_LIMIT`; big top-level values are
deferred, and the few the index needs are read before the file moves.  Error
messages never quote received values (they reach the log and the audit trail).
"""
from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from sqlalchemy import Connection, Table, bindparam, case, null, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicomnode.errors import (
    DuplicateConflictError,
    InvalidDatasetError,
    InvalidUIDError,
    OutOfResourcesError,
    SOPClassMismatchError,
)
from dicomnode.storage.db import Database
from dicomnode.storage.groupcommit import GroupCommit
from dicomnode.storage.index import find_instance, insert_absent
from dicomnode.storage.models import Instance, Patient, Series, Study, utcnow
from dicomnode.storage.spool import NO_SPACE_ERRNOS, Spool

logger = logging.getLogger(__name__)

#: PS3.5 §9.1: components of digits, no leading zero (except "0" itself), dots between.
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: Quoted values in a parser's message (``'DOE^JOHN'``, ``b'..'``): they may be patient data.
QUOTED_RE = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")

#: Header attributes kept in ``Instance.attributes`` for module selection.
EXTRA_KEYWORDS = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SliceLocation", "FrameTime", "CineRate", "RecommendedDisplayFrameRate",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "SamplesPerPixel",
    "PixelRepresentation", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "ContentDate", "ContentTime", "PatientOrientation", "Manufacturer",
    "ImagerPixelSpacing", "DistanceSourceToDetector", "DistanceSourceToPatient",
)
#: Every attribute the index row is built from (:meth:`Ingestor._index`).
INDEX_KEYWORDS = (
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "Modality", "SeriesNumber",
    "SeriesDescription", "BodyPartExamined", "ImageType", "ViewPosition", "ImageLaterality",
    "PositionerPrimaryAngle", "PositionerSecondaryAngle", "ImageOrientationPatient",
    "NumberOfSeriesRelatedInstances", "InstanceNumber", "NumberOfFrames", "Rows", "Columns",
    "AcquisitionDateTime", *EXTRA_KEYWORDS,
)
#: A deferred (over 4 kB) value the index reads is loaded before the file moves if it
#: is at most this long; a longer one (no real value of these attributes is) stays in
#: the stored file but out of the index row.
INDEX_VALUE_LIMIT = 64 * 1024
#: Values pydicom defers (reads only on access) at the top level; see read_header.
DEFER_SIZE = 4096
#: What a data set's parsed part (small top-level values, whole sequences) may take
#: in memory.  pydicom reads sequences eagerly: unchecked, a 2 GB value inside a
#: sequence item became 2 GB of RSS.
HEADER_MEMORY_LIMIT = 64 << 20
#: Sequences nested deeper than this are refused (pydicom parses them recursively).
MAX_SEQUENCE_DEPTH = 64
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                      b"UT", b"UV"})


def valid_uid(value: Any) -> bool:
    """True when ``value`` is a UID that PS3.5 §9.1 allows (≤ 64 chars)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(UID_RE.match(value))


def uid_problem(value: Any) -> str:
    """Why ``value`` is not a valid UID, without quoting it."""
    if isinstance(value, MultiValue):
        return f"{len(value)} values where one is allowed"
    text = str(value)
    if len(text) > 64:
        return f"{len(text)} characters, more than 64"
    if not re.fullmatch(r"[0-9.]*", text):
        return f"{len(text)} characters, not only digits and dots"
    if "" in text.split("."):
        return "an empty component"
    return "a component with a leading zero"


def redact(message: str, limit: int = 300) -> str:
    """A parser's error message without the values it quotes (they may be PHI), shortened."""
    return QUOTED_RE.sub("'…'", message)[:limit]


def _plain(value: Any) -> Any:
    """A header value as JSON-friendly Python (lists of floats, strings)."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.IS):
        return float(value)
    return str(value)


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value)[:limit]


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


class HeaderScan:
    """Walks element headers, never values, to learn what pydicom would hold in memory.

    Parameters
    ----------
    fh : BinaryIO
        The Part 10 file.
    size : int
        Its length.
    implicit, little : bool
        The data set's encoding (from its transfer syntax).
    """

    def __init__(self, fh: Any, size: int, implicit: bool, little: bool) -> None:
        self.fh, self.size, self.implicit = fh, size, implicit
        self.u16, self.u32 = ("<H", "<L") if little else (">H", ">L")

    def _read(self, pos: int, n: int) -> bytes:
        self.fh.seek(pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise EOFError(f"data ends inside an element header at byte {pos}")
        return bytes(data)

    def _header(self, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"" if implicit, value length, value offset) of the element at ``pos``."""
        head = self._read(pos, 8)
        tag = (struct.unpack(self.u16, head[:2])[0] << 16) | struct.unpack(self.u16, head[2:4])[0]
        if implicit or tag >> 16 == 0xFFFE:  # items and delimiters have no VR
            return tag, b"", struct.unpack(self.u32, head[4:8])[0], pos + 8
        vr = head[4:6]
        if vr in LONG_VRS:
            return tag, vr, struct.unpack(self.u32, self._read(pos + 8, 4))[0], pos + 12
        return tag, vr, struct.unpack(self.u16, head[6:8])[0], pos + 8

    def element(self, pos: int, depth: int, implicit: bool) -> tuple[int, bool]:
        """End of the element at ``pos``, and whether pydicom keeps its value in memory."""
        tag, vr, length, value = self._header(pos, implicit)
        is_sequence = vr == b"SQ" or (not vr and _dictionary_vr(tag) == "SQ")
        if is_sequence or (length == UNDEFINED_LENGTH and tag not in PIXEL_DATA_TAGS):
            # PS3.5 6.2.2: UN of undefined length holds an implicit VR LE sequence.
            nested = implicit or vr == b"UN"
            return self._sequence(value, length, depth + 1, nested), True
        if length == UNDEFINED_LENGTH:  # encapsulated pixel data: fragments, deferred
            return self._sequence(value, length, depth, implicit, fragments=True), False
        if value + length > self.size:
            raise EOFError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the data")
        return value + length, length <= DEFER_SIZE

    def _sequence(self, pos: int, length: int, depth: int, implicit: bool, fragments: bool = False) -> int:
        if depth > MAX_SEQUENCE_DEPTH:  # refused outright, however the rest would parse
            raise InvalidDatasetError(f"cannot parse data set: sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
        end = None if length == UNDEFINED_LENGTH else pos + length
        while end is None or pos < end:
            tag, _, item_length, value = self._header(pos, True)
            if tag == SEQUENCE_END and end is None:
                return value
            if tag != ITEM:
                raise ValueError(f"expected an item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            pos = value + item_length if fragments else self._item(value, item_length, depth, implicit)
        return end

    def _item(self, pos: int, length: int, depth: int, implicit: bool) -> int:
        end = None if length == UNDEFINED_LENGTH else pos + length
        while end is None or pos < end:
            if end is None and self._header(pos, True)[0] == ITEM_END:
                return pos + 8
            pos = self.element(pos, depth, implicit)[0]
        return end

    def in_memory(self, start: int) -> int:
        """Bytes of the data set from ``start`` that pydicom reads eagerly."""
        total, pos = 0, start
        while pos < self.size:
            end, eager = self.element(pos, 0, self.implicit)
            total += end - pos if eager else 0
            pos = end
        return total


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private or unknown: pydicom reads it as UN
        return "UN"


def dataset_start(fh: Any) -> tuple[int, str] | None:
    """Offset of the data set after a Part 10 file meta, and the transfer syntax; None if absent."""
    fh.seek(128)
    if fh.read(4) != b"DICM":
        return None
    pos, syntax = 132, ""
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            return pos, syntax
        if head[4:6] in LONG_VRS:
            length, value = struct.unpack("<L", fh.read(4))[0], pos + 12
        else:
            length, value = struct.unpack("<H", head[6:8])[0], pos + 8
        if struct.unpack("<H", head[2:4])[0] == 0x0010:
            fh.seek(value)
            syntax = fh.read(length).decode("ascii", "replace").rstrip("\0 ")
        pos = value + length


@dataclass(frozen=True)
class Ingested:
    """What :meth:`Ingestor.ingest` did."""

    sop_instance_uid: str
    study_instance_uid: str
    path: str
    duplicate: bool = False
    replaced: bool = False


_PATIENT, _STUDY, _SERIES, _INSTANCE = (cast(Table, m.__table__) for m in (Patient, Study, Series, Instance))
#: The statements of one C-STORE's index write, built once (SQLAlchemy Core: the ORM's
#: unit of work cost ~1.5 ms of the receiver's ~9 ms per instance under py-spy).
_SELECT_PATIENT = select(_PATIENT.c.id).where(
    _PATIENT.c.patient_id == bindparam("b_pid"), _PATIENT.c.issuer_of_patient_id == bindparam("b_issuer"))
#: An arrival re-opens a complete or routed study (routing runs again).
_TOUCH_STUDY = (update(_STUDY).where(_STUDY.c.study_instance_uid == bindparam("b_uid"))
                .values(last_received_at=bindparam("b_now"), state="receiving").returning(_STUDY.c.id))
_SERIES_ADDED = (update(_STUDY).where(_STUDY.c.id == bindparam("b_id"))
                 .values(last_series_added_at=bindparam("b_now")))
#: ...and a complete series (SET expressions read the row as it was: CASE sees the old state).
_TOUCH_SERIES = (update(_SERIES).where(_SERIES.c.series_instance_uid == bindparam("b_uid"))
                 .values(last_received_at=bindparam("b_now"),
                         completed_at=case((_SERIES.c.state == "open", _SERIES.c.completed_at), else_=null()),
                         state="open")
                 .returning(_SERIES.c.id))
_SELECT_INSTANCE = select(_INSTANCE.c.id, _INSTANCE.c.path, _INSTANCE.c.sha256).where(
    _INSTANCE.c.sop_instance_uid == bindparam("b_uid"))


def _find_or_create(conn: Connection, ids: dict[tuple[str, ...], int], key: tuple[str, ...],
                    find: Any, params: dict[str, Any], table: Table,
                    values: Callable[[], dict[str, Any]]) -> tuple[int, bool]:
    """The id of the row ``find`` returns (a SELECT, or an UPDATE … RETURNING that touches
    it), inserting ``values()`` first when there is none; and whether it was created.

    ``ids`` remembers it for the rest of the transaction (a group-commit batch often
    holds many instances of one series).
    """
    found = ids.get(key)
    if found is not None:
        return found, False
    row_id = conn.execute(find, params).scalar()
    created = False
    if row_id is None:
        row_id = insert_absent(conn, table, values())
        created = row_id is not None
        if row_id is None:  # another receiver created it a moment ago
            row_id = conn.execute(find, params).scalar_one()
    ids[key] = row_id
    return row_id, created


class Ingestor:
    """Validates, places and indexes received instances.

    Parameters
    ----------
    db : Database
        The index.
    spool : Spool
        Where files go.
    duplicate_policy : str
        ``"keep_newest"`` (default) or ``"reject"`` for a known SOP Instance UID
        arriving with other bytes.
    min_free_bytes : int
        Below this much free space the spool answers Out of Resources before it
        fills completely (SQLite and the OS need room too).
    """

    def __init__(
        self, db: Database, spool: Spool, duplicate_policy: str = "keep_newest",
        min_free_bytes: int = 0,
    ) -> None:
        self.db = db
        self.spool = spool
        self.duplicate_policy = duplicate_policy
        self.min_free_bytes = min_free_bytes
        self.group = GroupCommit(db)

    def warm_up(self) -> None:
        """Open an index connection and compile the statements of a C-STORE, then roll back.

        On a fresh process the first instance otherwise paid ~80 ms for SQLAlchemy's
        statement compilation and the connection's pragmas (measured with timing
        spans; a single large instance is a whole benchmark run).
        """
        ds = Dataset()
        ds.SOPClassUID = ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = "2.25.0"
        try:
            with self.db.sessionmaker() as session:
                session.connection().execute(_SELECT_INSTANCE, {"b_uid": "2.25.0"})
                self._index(session, ds, "warm-up", "0" * 64, 0, "1.2.840.10008.1.2.1", "", False)
                session.rollback()
        except SQLAlchemyError as exc:  # the index is checked for real by each C-STORE
            logger.debug("index warm-up failed: %s", type(exc).__name__)

    def read_header(self, path: Path) -> Dataset:
        """Parse the whole data set without loading large values; broken input → 0xC000.

        Values over 4 kB (pixel data) are deferred: pydicom records where they are and
        walks encapsulated fragments without reading them (raising at EOF if the
        sequence never ends).  A defined-length value that runs past the end of the
        file is a truncated transfer, which a header-only read would not notice.
        """
        size = path.stat().st_size
        self._check_memory(path, size)
        where = ""
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
            tags = sorted(ds.keys())
            if not tags:
                raise EOFError("empty data set")
            # Elements are in ascending tag order, so the last one must end exactly at
            # the end of the file: pydicom stops silently at EOF inside a header.
            last = ds.get_item(tags[-1], keep_deferred=True)
            if isinstance(last, RawDataElement) and last.length != UNDEFINED_LENGTH:
                end = last.value_tell + last.length
                if end != size:
                    raise EOFError(f"data set ends at byte {end} of {size}: truncated or trailing bytes")
            for tag in tags:
                where = f" at {tag}"
                raw = ds.get_item(tag, keep_deferred=True)
                if isinstance(raw, RawDataElement) and raw.value is None:
                    if raw.length != UNDEFINED_LENGTH and raw.value_tell + raw.length > size:
                        raise EOFError(f"value of {tag} ends {raw.value_tell + raw.length - size} bytes past the end of the data")
                    continue
                elem = ds[tag]  # converts the value: a bad VR or length fails here
                if elem.VR == "SQ":
                    for item in elem.value:
                        for nested in item.iterall():
                            _ = nested.value
        except RecursionError:
            raise InvalidDatasetError("cannot parse data set: sequences nested too deeply") from None
        except Exception as exc:  # pydicom raises many types for broken input
            raise InvalidDatasetError(
                f"cannot parse data set{where}: {type(exc).__name__}: {redact(str(exc))}"
            ) from None
        self._check_pixel_data(ds)
        return ds

    @staticmethod
    def _check_memory(path: Path, size: int) -> None:
        """Refuse a data set whose parsed part would not fit :data:`HEADER_MEMORY_LIMIT`.

        A header the scan cannot walk is left to pydicom to judge, unless the file is
        too large for its whole content to be held safely.
        """
        with open(path, "rb") as fh:
            start = dataset_start(fh)
            if start is None:
                return
            syntax = UID(start[1] or "1.2.840.10008.1.2")
            try:
                scan = HeaderScan(fh, size, syntax.is_implicit_VR, syntax.is_little_endian)
                eager = scan.in_memory(start[0])
            except (EOFError, ValueError, struct.error) as exc:
                if size - start[0] > HEADER_MEMORY_LIMIT:
                    raise InvalidDatasetError(f"cannot parse data set: {exc}") from None
                return
        if eager > HEADER_MEMORY_LIMIT:
            raise InvalidDatasetError(
                f"data set header (sequences and small values) of {eager} bytes exceeds the "
                f"{HEADER_MEMORY_LIMIT} bytes the receiver parses in memory")

    @staticmethod
    def _load_index_values(ds: Dataset) -> None:
        """Read the deferred values the index needs while the file is still where pydicom saw it.

        pydicom reads a deferred value from the original path on first access; after
        :meth:`Spool.place` that path is gone, and a 5 kB SeriesDescription turned
        into "index write failed" (0xA700) on every retry.
        """
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        *INDEX_KEYWORDS):
            tag = tag_for_keyword(keyword)
            if tag is None or tag not in ds:
                continue
            raw = ds.get_item(tag, keep_deferred=True)
            if not isinstance(raw, RawDataElement) or raw.value is not None:
                continue
            if keyword.endswith("UID"):  # over 4 kB: no UID is that long
                raise InvalidUIDError(f"invalid {keyword}: {raw.length} bytes, more than 64 (PS3.5 §9.1)")
            if raw.length > INDEX_VALUE_LIMIT:
                del ds[tag]  # the in-memory header only; the file keeps it as received
                continue
            try:
                _ = ds[tag].value
            except Exception as exc:  # a value pydicom cannot convert: broken input
                raise InvalidDatasetError(
                    f"cannot parse data set at {Tag(tag)}: {type(exc).__name__}: {redact(str(exc))}"
                ) from None

    @staticmethod
    def _check_pixel_data(ds: Dataset) -> None:
        """An image must carry all its pixels: a transfer cut at an element boundary would not."""
        sop_class = UID(str(ds.get("SOPClassUID", "")))
        is_image = "Image Storage" in sop_class.name or ("Rows" in ds and "Columns" in ds)
        if not is_image:
            return
        present = [t for t in PIXEL_DATA_TAGS if t in ds]
        if not present:
            raise InvalidDatasetError("image without pixel data (truncated?)")
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if present[0] != 0x7FE00010 or (syntax is not None and UID(syntax).is_encapsulated):
            return  # encapsulated: fragments were walked to the sequence delimiter
        raw = ds.get_item(present[0], keep_deferred=True)
        length = raw.length if isinstance(raw, RawDataElement) else len(ds.PixelData or b"")
        try:
            bits = int(ds.get("BitsAllocated", 8))
            expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                        * int(ds.get("NumberOfFrames", 1) or 1) * bits + 7) // 8
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidDatasetError(f"bad image geometry: {exc}") from None
        if length < expected:
            raise InvalidDatasetError(f"pixel data has {length} bytes, the image needs {expected}")

    def validate(self, ds: Dataset, context_sop_class: str, command_sop_instance: str | None) -> None:
        """Check the identifying UIDs and the SOP class against the presentation context."""
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = ds.get(keyword)
            if value in (None, ""):
                raise InvalidDatasetError(f"missing {keyword}")
            if not valid_uid(str(value)):
                # The value itself stays out of the message: it is whatever the sender
                # put there (paths, control characters, a patient ID) and the message
                # goes to the log and the audit trail.
                raise InvalidUIDError(f"invalid {keyword}: {uid_problem(value)} (PS3.5 §9.1)")
        if str(ds.SOPClassUID) != context_sop_class:
            raise SOPClassMismatchError(
                f"data set SOP Class {ds.SOPClassUID} differs from the context's {context_sop_class}"
            )
        if command_sop_instance and str(ds.SOPInstanceUID) != command_sop_instance:
            raise SOPClassMismatchError(
                f"data set SOP Instance UID differs from the request's {command_sop_instance}"
            )

    def ingest(
        self,
        tmp_path: Path,
        sha256: str,
        size: int,
        *,
        context_sop_class: str,
        transfer_syntax: str,
        calling_ae: str = "",
        command_sop_instance: str | None = None,
        is_result: bool = False,
        on_parsed: Callable[[Dataset], None] | None = None,
    ) -> Ingested:
        """Validate, place and index one received instance (see module docstring).

        ``on_parsed`` is called with the parsed header before validation, so a caller
        can name the patient of a refused instance where the site allows it.
        """
        ds = self.read_header(tmp_path)
        self._load_index_values(ds)
        if on_parsed is not None:
            on_parsed(ds)
        self.validate(ds, context_sop_class, command_sop_instance)
        sop_uid = str(ds.SOPInstanceUID)
        study_uid = str(ds.StudyInstanceUID)
        series_uid = str(ds.SeriesInstanceUID)

        try:
            with self.db.engine.connect() as conn:
                existing = conn.execute(_SELECT_INSTANCE, {"b_uid": sop_uid}).first()
                if existing is not None and existing.sha256 == sha256:
                    return Ingested(sop_uid, study_uid, existing.path, duplicate=True)
                if existing is not None and self.duplicate_policy == "reject":
                    raise DuplicateConflictError(
                        "SOP Instance UID already stored with other content (policy: reject)"
                    )
        except SQLAlchemyError as exc:
            raise OutOfResourcesError(f"index unavailable: {exc.__class__.__name__}") from None

        if self.min_free_bytes and self.spool.free_bytes() < self.min_free_bytes:
            raise OutOfResourcesError("spool below its free-space reserve")
        relative = self.spool.relative_path(study_uid, series_uid, sop_uid, sha256)
        try:
            self.spool.place(tmp_path, relative)
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                raise OutOfResourcesError(f"spool full or unwritable: {exc.strerror}") from None
            raise OutOfResourcesError(f"cannot write spool: {exc}") from None

        try:
            replaced_path = self.group.run(lambda session: self._index(
                session, ds, relative, sha256, size, transfer_syntax, calling_ae, is_result))
        except (SQLAlchemyError, OSError) as exc:
            # The file is in place but not indexed: remove it unless an identical
            # earlier copy (same path) is what the index already points to.
            self._remove_unindexed(sop_uid, relative)
            reason = "database locked" if isinstance(exc, OperationalError) else type(exc).__name__
            raise OutOfResourcesError(f"index write failed: {reason}") from None
        if replaced_path and replaced_path != relative:
            self.spool.remove(replaced_path)
        return Ingested(sop_uid, study_uid, relative, replaced=replaced_path is not None)

    # -- index ----------------------------------------------------------------
    def _index(
        self, session: Session, ds: Dataset, relative: str, sha256: str, size: int,
        transfer_syntax: str, calling_ae: str, is_result: bool,
    ) -> str | None:
        """Write one instance's rows in the (group-commit) transaction; the path it replaced.

        Patient, study and series are found or created once per transaction
        (``session.info`` remembers their ids: a batch often holds many instances of one
        series), with the study and series touched by the same statement.
        """
        conn = session.connection()
        ids: dict[tuple[str, ...], int] = session.info.setdefault("dicomnode_ids", {})
        now = utcnow()
        patient_id, issuer = _text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")
        patient_fk, _ = _find_or_create(
            conn, ids, ("patient", patient_id, issuer), _SELECT_PATIENT,
            {"b_pid": patient_id, "b_issuer": issuer}, _PATIENT, lambda: {
                "patient_id": patient_id, "issuer_of_patient_id": issuer,
                "patient_name": _text(ds, "PatientName", 324),
                "patient_birth_date": _text(ds, "PatientBirthDate", 8),
                "patient_sex": _text(ds, "PatientSex", 16)})
        study_uid = str(ds.StudyInstanceUID)
        study_fk, _ = _find_or_create(
            conn, ids, ("study", study_uid), _TOUCH_STUDY, {"b_uid": study_uid, "b_now": now}, _STUDY,
            lambda: {
                "study_instance_uid": study_uid, "patient_fk": patient_fk,
                "study_date": _text(ds, "StudyDate", 8), "study_time": _text(ds, "StudyTime", 16),
                "accession_number": _text(ds, "AccessionNumber", 16),
                "study_description": _text(ds, "StudyDescription"), "state": "receiving",
                "generation": 0, "first_received_at": now, "last_received_at": now,
                "last_series_added_at": now})
        series_uid = str(ds.SeriesInstanceUID)
        series_fk, new_series = _find_or_create(
            conn, ids, ("series", series_uid), _TOUCH_SERIES, {"b_uid": series_uid, "b_now": now},
            _SERIES, lambda: {
                "series_instance_uid": series_uid, "study_fk": study_fk,
                "modality": _text(ds, "Modality", 16), "series_number": _int(ds, "SeriesNumber"),
                "series_description": _text(ds, "SeriesDescription"),
                "body_part_examined": _text(ds, "BodyPartExamined", 16),
                "image_type": _text(ds, "ImageType", 256),
                "view_position": _text(ds, "ViewPosition", 16),
                "image_laterality": _text(ds, "ImageLaterality", 16),
                "positioner_primary_angle": _float(ds, "PositionerPrimaryAngle"),
                "positioner_secondary_angle": _float(ds, "PositionerSecondaryAngle"),
                "image_orientation_patient": _text(ds, "ImageOrientationPatient", 128),
                "calling_ae": calling_ae[:16],
                "expected_instances": _int(ds, "NumberOfSeriesRelatedInstances"),
                "is_result": is_result, "state": "open", "first_received_at": now,
                "last_received_at": now})
        if new_series:
            conn.execute(_SERIES_ADDED, {"b_id": study_fk, "b_now": now})

        attributes = {kw: _plain(ds.get(kw)) for kw in EXTRA_KEYWORDS if ds.get(kw) not in (None, "")}
        values = {
            "series_fk": series_fk,
            "sop_class_uid": str(ds.SOPClassUID),
            "transfer_syntax_uid": transfer_syntax,
            "instance_number": _int(ds, "InstanceNumber"),
            "number_of_frames": _int(ds, "NumberOfFrames") or 1,
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "acquisition_datetime": _text(ds, "AcquisitionDateTime", 32),
            "calling_ae": calling_ae[:16],
            "received_at": now,
            "path": relative,
            "size": size,
            "sha256": sha256,
            "attributes": attributes,
        }
        sop_uid = str(ds.SOPInstanceUID)
        existing = conn.execute(_SELECT_INSTANCE, {"b_uid": sop_uid}).first()
        if existing is None:
            conn.execute(_INSTANCE.insert(), {"sop_instance_uid": sop_uid, **values})
            return None
        conn.execute(update(_INSTANCE).where(_INSTANCE.c.id == existing.id), values)
        if existing.sha256 != sha256:
            logger.warning("replaced instance with other content (policy keep_newest)")
        return str(existing.path)

    def _remove_unindexed(self, sop_uid: str, relative: str) -> None:
        try:
            with self.db.session() as session:
                row = find_instance(session, sop_uid)
                if row is not None and row.path == relative:
                    return
        except SQLAlchemyError:
            pass  # index unreachable: the file is not referenced by anything we can see
        try:
            self.spool.remove(relative)
        except OSError:
            logger.error("could not remove unindexed spool file %s", relative)
