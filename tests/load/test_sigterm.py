"""SIGTERM while four storescu senders push: a clean stop, nothing half-written, nothing lost.

The node must exit 0 within its grace period; afterwards the spool's tmp/ is
empty, every indexed file is complete (size and sha256 equal the index) and every
spool file is indexed, and every instance a sender was told was stored is in the
index.  Instances still in flight at the stop are refused or cut off, never kept
half.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time

import pydicom
import pytest
from conftest import dcmtk
from dicom_factory import mr_series
from fuzz.figures import note
from fuzz.harness import check_index_matches_spool, index_rows, start_node, temp_files, wait_for

SENDERS, PER_SENDER = 4, 120


def acknowledged(output: str, sop_of: dict[str, str]) -> list[str]:
    """SOP Instance UIDs storescu -v reports as stored with success."""
    out, current = [], None
    for line in output.splitlines():
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            out.append(sop_of[current])
    return out


@pytest.mark.slow
def test_sigterm_under_load_stops_cleanly_with_nothing_half_written(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("sigterm-node")
    node = start_node(base)
    work = tmp_path_factory.mktemp("sigterm-data")
    # 128 kB instances: long enough on the wire that some are mid-transfer at the signal.
    streams = [mr_series(work / f"s{i}", n=PER_SENDER, rows=256, columns=256) for i in range(SENDERS)]
    sop_of = {str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
              for files in streams for f in files}
    senders = [subprocess.Popen([dcmtk("storescu"), "-v", "-aet", f"PUSH{i}", "-aec", "DICOMNODE",
                                 "127.0.0.1", str(node.port), *map(str, files)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i, files in enumerate(streams)]
    assert wait_for(lambda: len(index_rows(node)) >= 40, timeout=120), "the load never got going"

    start = time.monotonic()
    code = node.stop(signal.SIGTERM, timeout=90)
    stop_seconds = time.monotonic() - start
    outputs = [p.communicate(timeout=120)[0] for p in senders]

    assert code == 0, node.log()[-3000:]
    log = node.log()
    assert "received SIGTERM" in log and "receiver stopped" in log
    assert "Traceback" not in log
    assert temp_files(node) == []  # no partial receive file left behind
    stored = check_index_matches_spool(node)  # complete, and no unindexed spool file
    acked = [sop for out in outputs for sop in acknowledged(out, sop_of)]
    assert 0 < len(acked) < SENDERS * PER_SENDER, "the signal must land mid-push"
    rows = index_rows(node)
    assert [sop for sop in acked if sop not in rows] == []  # nothing acknowledged was lost
    note(f"SIGTERM under load: exit 0 after {stop_seconds:.1f} s; {len(acked)} acknowledged, "
         f"{stored} stored, 0 partial files")
