"""The hand-made corpus (tests/fuzz/corpus.py) against one running node.

For every case: the status the case names, exactly one clear log line for a
refusal (none for a success) and no traceback, nothing written anywhere but the
spool (the whole data directory and the node's ``TMPDIR`` are compared before and
after), the study stored before the corpus untouched, and the node still the same
live process.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import NodeProcess
from dicom_factory import mr_series
from fuzz.corpus import CASES, SUCCESS, Case
from fuzz.harness import (
    Sender,
    alive,
    check_index_matches_spool,
    file_with,
    index_rows,
    start_node,
    tree,
)

#: The index and the log change with every case; everything else is compared byte for byte.
INDEX_FILES = ("data/index.sqlite", "data.log")


@pytest.fixture(scope="module")
def corpus_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("corpus-node")
    (base / "tmp").mkdir()
    node = start_node(base, env={"TMPDIR": str(base / "tmp")})
    yield node
    node.stop()


@pytest.fixture(scope="module")
def sender(corpus_node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sender]:
    good = mr_series(tmp_path_factory.mktemp("good"), n=3)
    s = Sender(corpus_node.port)
    for path in good:
        assert s.store(path) == SUCCESS
    yield s
    s.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_gets_its_status_and_harms_nothing(
    corpus_node: NodeProcess, sender: Sender, case: Case, tmp_path: Path
) -> None:
    base = corpus_node.data_dir.parent
    before_files = tree(base, skip=INDEX_FILES)
    before_rows = index_rows(corpus_node)
    log_offset = len(corpus_node.log())
    ds, data = case.build()
    path = file_with(ds, data, tmp_path / "case.dcm")

    answered = sender.store(path)

    assert answered == case.status, f"{case.name}: expected 0x{case.status:04X} ({case.why})"
    assert alive(corpus_node)
    new_log = corpus_node.log()[log_offset:]
    assert "Traceback" not in new_log
    refusals = [line for line in new_log.splitlines() if "refused" in line]
    if case.status == SUCCESS:
        assert refusals == []
    else:
        assert len(refusals) == 1, new_log
        assert f"0x{case.status:04X}" in refusals[0]
    # Nothing outside the spool; inside it, only the new instance when it was stored.
    after_files = tree(base, skip=INDEX_FILES)
    changed = {p for p in before_files if after_files.get(p) != before_files[p]}
    added = set(after_files) - set(before_files)
    assert changed == set() and not any(p.startswith("data/spool/tmp") for p in added)
    after_rows = index_rows(corpus_node)
    assert {k: after_rows[k] for k in before_rows} == before_rows  # other data untouched
    if case.status == SUCCESS:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert set(after_rows) - set(before_rows) == {sop}
        assert added == {f"data/spool/{after_rows[sop][0]}"}
    else:
        assert added == set() and after_rows == before_rows
    check_index_matches_spool(corpus_node)
