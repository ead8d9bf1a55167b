"""The import graph keeps the boundaries of STYLE.md (read from the source, not by importing).

net → storage; routing → storage; jobs → routing, ai (entry points), results, net.scu;
results → storage, net.scu, highdicom and ai.core result types (never torch);
storage → ai.core only for model metadata (the ModelVersion registry);
ai never imports pynetdicom or dicomnode; nothing imports the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files(package):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("ai", ("pynetdicom", "dicomnode")),
        ("train", ("pynetdicom", "dicomnode.net", "dicomnode.routing", "dicomnode.jobs",
                   "dicomnode.results")),
        ("dicomnode.results", ("torch", "monai", "ai.quality", "ai.mtici", "ai.keyframes",
                               "ai.spine", "dicomnode.jobs", "dicomnode.routing")),
        ("dicomnode.net", ("ai", "torch", "dicomnode.jobs", "dicomnode.routing", "dicomnode.results")),
        # storage.registry reads model metadata through ai.core (no torch at import).
        ("dicomnode.storage", ("ai.quality", "ai.mtici", "ai.keyframes", "ai.spine", "torch",
                               "monai", "pynetdicom", "dicomnode.net", "dicomnode.jobs",
                               "dicomnode.routing", "dicomnode.results")),
        ("dicomnode.routing", ("torch", "pynetdicom", "dicomnode.jobs", "dicomnode.results",
                               "dicomnode.net")),
    ],
)
def test_package_respects_its_boundary(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, forbidden) == []


def test_nothing_imports_the_cli() -> None:
    bad = [o for pkg in ("dicomnode.net", "dicomnode.storage", "dicomnode.routing", "dicomnode.jobs",
                         "dicomnode.results", "ai", "train")
           for o in offenders(pkg, ("dicomnode.cli",))]
    assert bad == []


RECEIVER_CODE = """
import socket, subprocess, sys, tempfile
from pathlib import Path
from dicomnode.app import Node
from dicomnode.config import load_settings
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
settings = load_settings(None, overrides={"node": {"port": port, "bind": "127.0.0.1",
                                                   "data_dir": tempfile.mkdtemp()},
                                          "jobs": {"workers": 0}})
node = Node(settings, roles=("receiver", "worker"))
node.start()
try:
    res = subprocess.run(["/usr/bin/storescu", "-aec", "DICOMNODE", "127.0.0.1", str(port), *sys.argv[1:]],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    print(" ".join(sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})))
finally:
    node.stop()
"""


def test_the_receiving_process_imports_neither_the_worker_side_nor_pydicoms_extras(tmp_path: Path) -> None:
    """The receiver's memory bound (≤ 100 MB peak on a 2 GB instance): highdicom, numpy,
    APScheduler and Alembic stay out of the process that holds the associations, also
    after it received instances; the worker role runs in a child process."""
    import subprocess
    import sys

    from dicom_factory import mr_series

    files = mr_series(tmp_path / "push", n=2, rows=64, columns=64)
    out = subprocess.run([sys.executable, "-c", RECEIVER_CODE, *map(str, files)], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(out.stdout.split())
    assert {"pydicom", "pynetdicom"} <= loaded  # it did receive
    assert loaded & {"highdicom", "numpy", "apscheduler", "alembic", "mako", "requests", "torch"} == set()


def test_the_receiver_process_does_not_import_torch_at_start() -> None:
    """The receiver's memory bound: torch lives in the worker processes only."""
    import subprocess
    import sys

    code = "import dicomnode.app, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_recording_a_storage_commitment_report_does_not_import_highdicom() -> None:
    """The receiving process records commitment reports through the outbox; highdicom
    (~30 MB, only for building results) must not come with it."""
    import subprocess
    import sys

    code = ("import sys; from dicomnode.results import record_commitment; "
            "print('highdicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
