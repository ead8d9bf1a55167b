"""Hypothesis strategies that corrupt bytes the way broken senders and attackers do.

A mutation is a short list of operations applied in order: byte flips, truncation,
insertion, deletion, and DICOM-aware edits (an element's length field or VR bytes
set to an awkward value, an element duplicated).  Operations draw positions as
fractions so one strategy serves inputs of any size.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from hypothesis import strategies as st
from pydicom.filereader import data_element_generator

#: Lengths that break parsers: zero, odd, off by one, 2-byte and 4-byte extremes, undefined.
AWKWARD_LENGTHS = [0, 1, 3, 0xFF, 0xFFFE, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
AWKWARD_VRS = [b"SQ", b"UN", b"OB", b"OW", b"UT", b"US", b"UL", b"FD", b"AT", b"DS", b"IS",
               b"ZZ", b"\x00\x00", b"\xff\xff", b"sq"]
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class Slot:
    """One top-level element: where its tag, VR (explicit only) and length field are."""

    start: int
    vr_at: int | None
    length_at: int
    length_size: int
    end: int
    big_endian: bool = False


def slots(data: bytes, implicit: bool) -> list[Slot]:
    """Top-level elements of a valid data set (the input before mutation)."""
    out = []
    for raw in data_element_generator(io.BytesIO(data), implicit, True, defer_size=0):
        value = raw.value_tell
        if implicit:
            out.append(Slot(value - 8, None, value - 4, 4, value + raw.length))
        elif raw.VR in {v.decode() for v in LONG_VRS}:
            out.append(Slot(value - 12, value - 8, value - 4, 4, value + raw.length))
        else:
            out.append(Slot(value - 8, value - 4, value - 2, 2, value + raw.length))
    return out


def pdu_slots(stream: bytes) -> list[Slot]:
    """PDUs (PS3.8 9.3) and the items inside them, as slots: lengths are big endian.

    The two bytes a "vr" edit overwrites are an item's type and reserved byte, or a
    PDV's presentation context ID and message control header.
    """
    out, pos = [], 0
    while pos + 6 <= len(stream):
        pdu_type, length = stream[pos], struct.unpack(">L", stream[pos + 2:pos + 6])[0]
        end = pos + 6 + length
        out.append(Slot(pos, pos, pos + 2, 4, end, True))
        if pdu_type == 0x04:  # P-DATA-TF: presentation data value items
            item = pos + 6
            while item + 6 <= end:
                item_len = struct.unpack(">L", stream[item:item + 4])[0]
                out.append(Slot(item, item + 4, item, 4, item + 4 + item_len, True))
                item += 4 + item_len
        elif pdu_type in (0x01, 0x02):  # A-ASSOCIATE: variable items, some with sub-items
            out += _items(stream, pos + 74, end)
        pos = end
    return out


def _items(stream: bytes, pos: int, end: int) -> list[Slot]:
    out = []
    while pos + 4 <= end:
        item_type, length = stream[pos], struct.unpack(">H", stream[pos + 2:pos + 4])[0]
        out.append(Slot(pos, pos, pos + 2, 2, pos + 4 + length, True))
        if item_type in (0x20, 0x21):  # presentation context: sub-items after 4 bytes
            out += _items(stream, pos + 8, pos + 4 + length)
        elif item_type == 0x50:  # user information
            out += _items(stream, pos + 4, pos + 4 + length)
        pos += 4 + length
    return out


fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

operation = st.one_of(
    st.tuples(st.just("flip"), fraction, st.integers(1, 255)),
    st.tuples(st.just("truncate"), fraction),
    st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), fraction, st.integers(1, 64)),
    st.tuples(st.just("length"), fraction, st.one_of(st.sampled_from(AWKWARD_LENGTHS),
                                                     st.integers(0, 0xFFFFFFFF))),
    st.tuples(st.just("vr"), fraction, st.sampled_from(AWKWARD_VRS)),
    st.tuples(st.just("duplicate"), fraction),
)
#: One to four operations: enough to compound damage, few enough to shrink well.
mutations = st.lists(operation, min_size=1, max_size=4)


def apply(data: bytes, layout: list[Slot], ops: list[tuple]) -> bytes:
    """Apply ``ops`` to ``data``; element edits use the layout of the unmutated input."""
    out = bytearray(data)
    for op in ops:
        kind, where = op[0], op[1]
        pos = min(int(where * len(out)), max(len(out) - 1, 0))
        slot = layout[min(int(where * len(layout)), len(layout) - 1)] if layout else None
        if kind == "flip" and out:
            out[pos] ^= op[2]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = op[2]
        elif kind == "delete":
            del out[pos:pos + op[2]]
        elif kind == "length" and slot is not None and slot.length_at + slot.length_size <= len(out):
            value = op[2] & (0xFFFF if slot.length_size == 2 else 0xFFFFFFFF)
            fmt = (">" if slot.big_endian else "<") + ("H" if slot.length_size == 2 else "L")
            out[slot.length_at:slot.length_at + slot.length_size] = struct.pack(fmt, value)
        elif kind == "vr" and slot is not None and slot.vr_at is not None and slot.vr_at + 2 <= len(out):
            out[slot.vr_at:slot.vr_at + 2] = op[2]
        elif kind == "duplicate" and slot is not None and slot.end <= len(out):
            out[slot.end:slot.end] = out[slot.start:slot.end]
    return bytes(out)
