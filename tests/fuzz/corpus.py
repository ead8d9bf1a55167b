"""Hand-made malformed (and awkward but valid) data sets, built byte by byte in the test.

Each case is bytes for the wire plus the status node.md §1 says the node must answer:
``0xC000`` for what cannot be parsed or names itself with a hostile UID, ``0x0000``
for data that is valid DICOM however unusual (long values, odd descriptions,
nesting), because the node stores what it is sent and never trusts it for a path.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dicom_factory import make_dataset, uid
from fuzz.harness import encode, lenient_writing
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

SUCCESS, CANNOT_UNDERSTAND = 0x0000, 0xC000
#: Explicit VR LE: these VRs have a 2-byte reserved field and a 4-byte length.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Element:
    """Where one top-level element sits in explicit VR little endian bytes."""

    tag: int
    vr: bytes
    start: int  # first byte of the tag
    value: int  # first byte of the value
    length: int

    @property
    def length_at(self) -> int:
        """Offset of the length field."""
        return self.start + (8 if self.vr in LONG_VRS else 6)


def elements(data: bytes) -> list[Element]:
    """Top-level elements of an explicit VR LE data set without sequences."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos:pos + 4])
        vr = data[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length, value = struct.unpack("<L", data[pos + 8:pos + 12])[0], pos + 12
        else:
            length, value = struct.unpack("<H", data[pos + 6:pos + 8])[0], pos + 8
        out.append(Element((group << 16) | elem, vr, pos, value, length))
        pos = value + length
    return out


def find(data: bytes, tag: int) -> Element:
    return next(e for e in elements(data) if e.tag == tag)


def with_length(data: bytes, tag: int, length: int) -> bytes:
    e = find(data, tag)
    size = 4 if e.vr in LONG_VRS else 2
    packed = struct.pack("<L" if size == 4 else "<H", length)
    return data[:e.length_at] + packed + data[e.length_at + size:]


def base(**attrs: object) -> Dataset:
    """The valid MR image every case starts from (8×8, 16-bit, explicit VR LE)."""
    return make_dataset(rows=8, columns=8, **attrs)


def item(payload: bytes, defined: bool = True) -> bytes:
    if defined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, len(payload)) + payload
    return struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + payload + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)


def sequence(tag: int, payload: bytes, defined: bool = False) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if defined:
        return struct.pack("<HH2sHL", group, elem, b"SQ", 0, len(payload)) + payload
    return (struct.pack("<HH2sHL", group, elem, b"SQ", 0, UNDEFINED) + payload
            + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def nested(depth: int) -> bytes:
    """ReferencedImageSequence items nesting ``depth`` levels, innermost a code value."""
    inner = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 4) + b"T-01"
    for _ in range(depth):
        inner = sequence(0x00081140, item(inner, defined=False))
    return inner


def insert_before(data: bytes, tag: int, extra: bytes) -> bytes:
    e = next(e for e in elements(data) if e.tag > tag)
    return data[:e.start] + extra + data[e.start:]


@dataclass(frozen=True)
class Case:
    """One corpus entry: what the node is sent and what it must answer."""

    name: str
    build: Callable[[], tuple[Dataset, bytes]]
    status: int
    why: str


def _ds_bytes(ds: Dataset, implicit: bool = False) -> tuple[Dataset, bytes]:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds, encode(ds, implicit=implicit)


def _patched(fn: Callable[[bytes], bytes], **attrs: object) -> Callable[[], tuple[Dataset, bytes]]:
    def build() -> tuple[Dataset, bytes]:
        ds, data = _ds_bytes(base(**attrs))
        return ds, fn(data)
    return build


def _hostile(attribute: str, value: str, in_command: bool = True) -> Callable[[], tuple[Dataset, bytes]]:
    def build() -> tuple[Dataset, bytes]:
        ds = base()
        with lenient_writing():
            setattr(ds, attribute, value)
            if attribute == "SOPInstanceUID" and in_command:
                ds.file_meta.MediaStorageSOPInstanceUID = value
        return _ds_bytes(ds)
    return build


def _valid(implicit: bool = False, **attrs: object) -> Callable[[], tuple[Dataset, bytes]]:
    def build() -> tuple[Dataset, bytes]:
        ds = base()
        with lenient_writing():
            for key, value in attrs.items():
                setattr(ds, key, value)
        return _ds_bytes(ds, implicit)
    return build


PN, ROWS, PIXELS = 0x00100010, 0x00280010, 0x7FE00010


def _never_ending_sequence(data: bytes) -> bytes:
    # A sequence after the pixel data (Digital Signatures, FFFA,FFFA) whose item and
    # sequence delimiters never come: the data ends inside it.
    payload = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 4) + b"T-01"
    return data + struct.pack("<HH2sHL", 0xFFFA, 0xFFFA, b"SQ", 0, UNDEFINED) + payload


def _never_ending_pixel_fragments(data: bytes) -> bytes:
    e = find(data, PIXELS)
    fragment = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # empty offset table, then nothing
    return data[:e.length_at] + struct.pack("<L", UNDEFINED) + fragment + data[e.value:e.value + 16]


CASES: list[Case] = [
    Case("empty data set", lambda: (base(), b""), CANNOT_UNDERSTAND, "nothing to store"),
    Case("random bytes", lambda: (base(), bytes(range(256)) * 4), CANNOT_UNDERSTAND, "not DICOM"),
    Case("truncated inside an element header",
         _patched(lambda d: d[:find(d, PN).start + 5]), CANNOT_UNDERSTAND, "transfer cut short"),
    Case("truncated by one byte of pixel data",
         _patched(lambda d: d[:-1]), CANNOT_UNDERSTAND, "transfer cut short"),
    Case("length field running past the end",
         _patched(lambda d: with_length(d, PIXELS, 0x7FFFFFF0)), CANNOT_UNDERSTAND,
         "the value would end 2 GB after the data"),
    Case("length field shorter than the value",
         _patched(lambda d: with_length(d, PN, 4)), CANNOT_UNDERSTAND,
         "the rest of the value is parsed as elements: garbage"),
    Case("odd length on a US element",
         _patched(lambda d: with_length(d, ROWS, 3)), CANNOT_UNDERSTAND, "US is 2 bytes per value"),
    Case("trailing bytes after the last element",
         _patched(lambda d: d + b"\x01\x02\x03\x04"), CANNOT_UNDERSTAND,
         "the data set does not end where its last element does"),
    Case("unknown VR bytes",
         _patched(lambda d: d[:find(d, PN).start + 4] + b"ZZ" + d[find(d, PN).start + 6:]),
         CANNOT_UNDERSTAND, "no such VR: the element length cannot be known"),
    Case("VR bytes that are not letters",
         _patched(lambda d: d[:find(d, ROWS).start + 4] + b"\x00\x01" + d[find(d, ROWS).start + 6:]),
         CANNOT_UNDERSTAND, "no such VR"),
    Case("undefined-length sequence that never ends",
         _patched(_never_ending_sequence), CANNOT_UNDERSTAND, "the data ends inside an item"),
    Case("encapsulated pixel data that never ends",
         _patched(_never_ending_pixel_fragments), CANNOT_UNDERSTAND,
         "fragments without a sequence delimiter, in a native transfer syntax"),
    Case("zero-byte pixel data",
         _patched(lambda d: with_length(d, PIXELS, 0)[:find(d, PIXELS).value]), CANNOT_UNDERSTAND,
         "an 8x8 image needs 128 bytes of pixels"),
    Case("SOP Instance UID with a NUL and a path", _hostile("SOPInstanceUID", "1.2.3\0/../../etc/passwd"),
         CANNOT_UNDERSTAND, "PS3.5 §9.1: digits and dots only"),
    Case("Study Instance UID that is an absolute path", _hostile("StudyInstanceUID", "/etc/passwd"),
         CANNOT_UNDERSTAND, "PS3.5 §9.1"),
    Case("Series Instance UID with backslashes", _hostile("SeriesInstanceUID", "..\\..\\..\\x"),
         CANNOT_UNDERSTAND, "PS3.5 §9.1 (and a backslash makes it multi-valued)"),
    Case("SOP Instance UID of 65 characters", _hostile("SOPInstanceUID", "1." + "2" * 63, in_command=False),
         CANNOT_UNDERSTAND, "PS3.5 §9.1: at most 64 characters"),
    Case("descriptions with ../, NUL and a forged log line",
         _valid(SeriesDescription="../../../../tmp/pwned\0x",
                StudyDescription="ok\n2026-01-01 00:00:00,000 INFO    forged: admin logged in"),
         SUCCESS, "descriptions are data, never paths: stored as received"),
    Case("70 kB patient name (implicit VR)",
         _valid(implicit=True, PatientName="Long^" + "N" * 70_000), SUCCESS,
         "valid encoding (4-byte length); the index keeps a prefix"),
    Case("64 kB patient ID (explicit VR, longest 2-byte length)",
         _valid(PatientID="P" * 65_534), SUCCESS, "valid encoding; the index keeps a prefix"),
    Case("5 kB series description (a value pydicom defers)",
         _valid(SeriesDescription="D" * 5000), SUCCESS,
         "valid; was answered 0xA700 for ever: the deferred value was read after the file moved"),
    Case("sequences nested 40 deep",
         _patched(lambda d: insert_before(d, 0x00081140 - 1, nested(40))), SUCCESS,
         "deep but well-formed"),
    Case("sequences nested 3000 deep",
         _patched(lambda d: insert_before(d, 0x00081140 - 1, nested(3000))), CANNOT_UNDERSTAND,
         "refused rather than recursing without bound"),
    Case("pixel data longer than the image",
         _patched(lambda d: with_length(d + b"\0" * 16, PIXELS, find(d, PIXELS).length + 16)), SUCCESS,
         "every pixel is there; trailing padding is stored as received"),
    Case("new instance in a known study", lambda: _ds_bytes(base(sop_uid=uid())), SUCCESS, "control case"),
]
