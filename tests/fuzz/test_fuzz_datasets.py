"""Hypothesis mutates valid data sets and C-STOREs them to a running node.

The oracle, for every execution: an answer comes (a status, within the DIMSE
timeout) and it is one node.md §1 allows (never 0x0110, which means an exception
escaped our validation).  After the campaign: the same node process is alive,
answers C-ECHO and stores a good instance, its peak RSS stayed bounded, no receive
file was left in the spool's tmp/, and every indexed file matches its row.

Examples are derandomized (the same corpus every CI run, so a failure reproduces);
``DICOMNODE_FUZZ_EXAMPLES=N`` runs a longer, random campaign locally.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from conftest import NodeProcess
from dicom_factory import make_dataset, uid
from fuzz.figures import note, record
from fuzz.harness import (
    EXPECTED_STATUSES,
    Sender,
    alive,
    check_index_matches_spool,
    echo,
    encode,
    file_with,
    fuzz_settings,
    proc_status,
    start_node,
    temp_files,
)
from fuzz.mutate import Slot, apply, mutations, slots
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, RLELossless

EXAMPLES = int(os.environ.get("DICOMNODE_FUZZ_EXAMPLES", "0")) or 160
#: The node's peak RSS may grow this much over its size before the campaign.
RSS_GROWTH_KB = 150 * 1024


def _with_sequences() -> Dataset:
    ds = make_dataset(CTImageStorage, modality="CT", rows=8, columns=8)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-01", "99X", "x"
    refs = []
    for _ in range(2):
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = uid()
        ref.PurposeOfReferenceCodeSequence = Sequence([inner])
        refs.append(ref)
    ds.ReferencedImageSequence = Sequence(refs)
    return ds


def _implicit() -> Dataset:
    ds = make_dataset(rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _encapsulated() -> Dataset:
    ds = make_dataset(rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([bytes(range(64)) * 2])
    ds["PixelData"].VR = "OB"
    return ds


def _bases() -> list[tuple[Dataset, bytes, list[Slot]]]:
    out = []
    for ds, implicit in ((make_dataset(rows=8, columns=8), False), (_implicit(), True),
                         (_with_sequences(), False), (_encapsulated(), False)):
        data = encode(ds, implicit=implicit)
        out.append((ds, data, slots(data, implicit)))
    return out


BASES = _bases()


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("fuzz-datasets"),
                      config={"node": {"network_timeout": 5.0, "dimse_timeout": 10.0}})
    yield node
    node.stop()


@pytest.mark.slow
def test_mutated_data_sets_are_answered_and_the_node_survives(
    fuzz_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert fuzz_node.proc is not None
    pid = fuzz_node.proc.pid
    rss_before = proc_status(pid, "VmRSS")
    work = tmp_path_factory.mktemp("fuzz-inputs")
    sender = Sender(fuzz_node.port, dimse_timeout=20)
    slowest = [0.0]

    @fuzz_settings(EXAMPLES)
    @given(base=st.sampled_from(range(len(BASES))), ops=mutations)
    def one(base: int, ops: list[tuple]) -> None:
        ds, data, layout = BASES[base]
        path = file_with(ds, apply(data, layout, ops), work / "mutated.dcm")
        start = time.monotonic()
        answer = sender.store(path)
        slowest[0] = max(slowest[0], time.monotonic() - start)
        record("data sets", "no answer" if answer is None else f"0x{answer:04X}")
        assert answer is not None, f"no status for {ops}"
        assert answer in EXPECTED_STATUSES, f"status 0x{answer:04X} for {ops}"
        assert alive(fuzz_node), f"node died on {ops}"

    one()
    sender.close()

    assert alive(fuzz_node) and fuzz_node.proc.pid == pid
    assert echo(fuzz_node.port).returncode == 0
    good = file_with(BASES[0][0], BASES[0][1], work / "good.dcm")
    good_sender = Sender(fuzz_node.port)
    assert good_sender.store(good) == 0
    good_sender.close()
    peak = proc_status(pid, "VmHWM")
    print(f"node RSS before {rss_before / 1024:.0f} MB, peak {peak / 1024:.0f} MB; "
          f"slowest answer {slowest[0]:.2f} s")
    assert peak - rss_before < RSS_GROWTH_KB
    deadline = time.monotonic() + 10
    while temp_files(fuzz_node) and time.monotonic() < deadline:
        time.sleep(0.1)  # the last association's clean-up runs as it closes
    assert temp_files(fuzz_node) == []
    check_index_matches_spool(fuzz_node)
    assert "Traceback" not in fuzz_node.log()
    note(f"fuzz data sets: 0 crashes, 0 hangs; node peak RSS {peak / 1024:.0f} MB "
         f"(+{(peak - rss_before) / 1024:.0f} MB); slowest answer {slowest[0]:.2f} s")
