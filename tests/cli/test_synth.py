"""``dicomnode synth``: the push command it prints sends every file it wrote.

The modules write nested folders (a study per folder, the method's own formats beside
the DICOM files), so the hint must recurse and pick only DICOM files; it is run here
verbatim (HOST and PORT filled in) against dcmtk's ``storescp``.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import dcmtk, free_port, wait_for_port


@pytest.mark.parametrize("module", ["quality", "keyframes"])
def test_the_printed_push_command_sends_every_dicom_file_written(module: str,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "synth"
    done = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "synth", module, "--out", str(out),
                           "-n", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    hint = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "synth", module, "--out",
                           str(tmp_path / "again"), "-n", "1"],
                          capture_output=True, text=True, timeout=300)
    assert hint.returncode == 0, hint.stderr
    (line,) = [ln for ln in hint.stdout.splitlines() if "storescu" in ln]
    argv = shlex.split(line.split("push them:", 1)[1])
    assert argv[0] == "/usr/bin/storescu"

    written = sorted(out.rglob("*.dcm"))
    assert written, "synth wrote no DICOM file"
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-od", str(received), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=scp)
        argv = [str(port) if a == "PORT" else "127.0.0.1" if a == "HOST" else a for a in argv]
        argv[-1] = str(out)
        push = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    got = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
           for p in received.iterdir()}
    want = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in written}
    assert got == want
