"""Values large enough to exhaust memory, where pydicom would read them eagerly.

pydicom defers big values only at the top level of a data set; inside a sequence
item it reads them whole.  Before the header scan, a 300 MB value in a sequence
raised the node's peak RSS by 300 MB and was stored: any allowed sender could
take the node's memory.  Now the parsed part of a header is bounded
(``HEADER_MEMORY_LIMIT``, 64 MB) and refused beyond it.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess
from dicom_factory import make_dataset
from fuzz.corpus import elements
from fuzz.harness import Sender, alive, encode, file_with, index_rows, proc_status, start_node

UNDEFINED = 0xFFFFFFFF


def with_big_value_in_a_sequence(path: Path, size: int) -> Path:
    """A valid MR image whose ReferencedImageSequence item holds a ``size``-byte UN value."""
    ds = make_dataset(rows=8, columns=8)
    data = encode(ds)
    cut = next(e for e in elements(data) if e.tag > 0x00081140).start
    head = (struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, UNDEFINED)
            + struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
            + struct.pack("<HH2sHL", 0x0009, 0x1010, b"UN", 0, size))
    tail = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    file_with(ds, data[:cut] + head, path)
    with open(path, "ab") as fh:
        chunk = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            fh.write(chunk)
        fh.write(tail + data[cut:])
    return path


@pytest.fixture(scope="module")
def big_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("big-values"))
    yield node
    node.stop()


def test_a_huge_value_inside_a_sequence_is_refused_without_reading_it(
    big_node: NodeProcess, tmp_path: Path
) -> None:
    assert big_node.proc is not None
    before = proc_status(big_node.proc.pid, "VmRSS")
    path = with_big_value_in_a_sequence(tmp_path / "big.dcm", 160 << 20)
    sender = Sender(big_node.port)
    assert sender.store(path) == 0xC000
    sender.close()
    assert proc_status(big_node.proc.pid, "VmHWM") - before < 48 * 1024
    assert alive(big_node) and index_rows(big_node) == {}
    assert "exceeds the 67108864 bytes" in big_node.log()


def test_a_modest_value_inside_a_sequence_is_stored(big_node: NodeProcess, tmp_path: Path) -> None:
    sender = Sender(big_node.port)
    assert sender.store(with_big_value_in_a_sequence(tmp_path / "ok.dcm", 2 << 20)) == 0
    sender.close()
