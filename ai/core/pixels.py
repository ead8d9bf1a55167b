"""Lazy frame access to multi-frame images, without decoding the whole Pixel Data.

A 1024×1024×60 XA run is 120 MiB as uint16 and would be 480 MiB as float64;
:class:`FrameReader` hands out one frame at a time.  For uncompressed (native)
little-endian Pixel Data it maps the file with ``numpy.memmap``: frames are views
of the page cache and nothing is copied until a caller computes on them.  For
encapsulated (compressed) Pixel Data it falls back to pydicom's ``iter_pixels``,
which decodes frame by frame.  (highdicom's ``ImageFileReader`` reads frames
lazily the same way.)
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

logger = logging.getLogger(__name__)

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VR elements whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}


class FrameReader:
    """Read the frames of one image file lazily.

    Parameters
    ----------
    path : Path
        A DICOM file with monochrome Pixel Data (one or more frames).

    Attributes
    ----------
    header : pydicom.Dataset
        Every attribute except Pixel Data.
    number_of_frames, rows, columns : int
    dtype : numpy.dtype
        Stored pixel type (e.g. ``uint16``).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._memmap: np.memmap[Any, Any] | None = None
        with open(self.path, "rb") as fh:
            self.header = pydicom.dcmread(fh, stop_before_pixels=True)
            offset = fh.tell()
            raw_header = fh.read(12)
        h = self.header
        if "Rows" not in h or "Columns" not in h:
            raise ValueError(f"{self.path}: no Rows/Columns (not an image)")
        self.rows = int(h.Rows)
        self.columns = int(h.Columns)
        self.number_of_frames = int(h.get("NumberOfFrames", 1) or 1)
        self.samples_per_pixel = int(h.get("SamplesPerPixel", 1))
        bits = int(h.get("BitsAllocated", 16))
        signed = int(h.get("PixelRepresentation", 0)) == 1
        self.dtype = np.dtype(f"{'i' if signed else 'u'}{max(bits, 8) // 8}")
        tsyntax = UID(h.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        native = (not tsyntax.is_compressed and tsyntax.is_little_endian
                  and not tsyntax.is_deflated and bits in (8, 16, 32))
        if native and self.samples_per_pixel == 1:
            data_offset = _pixel_data_value_offset(raw_header, offset, tsyntax.is_implicit_VR)
            if data_offset is not None:
                self._memmap = np.memmap(
                    self.path, dtype=self.dtype.newbyteorder("<"), mode="r", offset=data_offset,
                    shape=(self.number_of_frames, self.rows, self.columns),
                )

    # -- access ---------------------------------------------------------------
    @property
    def is_memory_mapped(self) -> bool:
        """True when frames are views of a memory map (native Pixel Data)."""
        return self._memmap is not None

    def __len__(self) -> int:
        return self.number_of_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames in order, each (rows, columns) in the stored type."""
        if self._memmap is not None:
            yield from self._memmap
            return
        from pydicom.pixels import iter_pixels

        yield from iter_pixels(self.path, raw=False)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based)."""
        if self._memmap is not None:
            return np.asarray(self._memmap[index])
        from pydicom.pixels import pixel_array

        return pixel_array(self.path, index=index)

    def close(self) -> None:
        """Drop the memory map (frames handed out stay valid while referenced)."""
        self._memmap = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pixel_data_value_offset(raw: bytes, offset: int, implicit: bool) -> int | None:
    """File offset of Pixel Data's value, or None if ``raw`` is not its native header.

    ``raw`` holds the 12 bytes at ``offset``, where pydicom's ``stop_before_pixels``
    left the file position (the start of the Pixel Data element).
    """
    if len(raw) < 8 or struct.unpack("<HH", raw[:4]) != PIXEL_DATA_TAG:
        return None
    if implicit:
        (length,) = struct.unpack("<I", raw[4:8])
        start = offset + 8
    else:
        vr = raw[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", raw[8:12])
            start = offset + 12
        else:
            (length,) = struct.unpack("<H", raw[6:8])
            start = offset + 8
    if length == _UNDEFINED_LENGTH:
        return None
    return start
