"""Receivers the benchmarks compare: dicomnode, dcmtk storescp (default and +B), Orthanc.

Each peer starts fresh for every measurement (empty storage, so no duplicate
short-cuts), listens on 127.0.0.1, and reports its peak RSS (VmHWM) from /proc.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` and its children (storescp --fork), in MB."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]) / 1024)
        except FileNotFoundError:
            pass
    return total


@dataclass
class Peer:
    """A receiver under test; ``start`` gives it an empty storage directory."""

    name: str
    workdir: Path
    aetitle: str = "BENCH"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def command(self, storage: Path) -> list[str]:
        raise NotImplementedError

    def prepare(self, storage: Path) -> None:
        """Write config files before start (Orthanc, dicomnode)."""

    def env(self) -> dict[str, str]:
        """Environment the peer runs with, beyond the bench's own."""
        return {}

    def start(self) -> None:
        storage = self.workdir / self.name
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir(parents=True)
        self.port = free_port()
        self.prepare(storage)
        log = open(storage.with_suffix(".log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(storage), stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env()})
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.workdir / self.name, ignore_errors=True)

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        return peak_rss_mb(self.proc.pid)


class DicomNode(Peer):
    """``dicomnode run``, fsync and index commit on (the defaults)."""

    def prepare(self, storage: Path) -> None:
        # Routing off for the receive benchmark: no rules match, no jobs are queued.
        # ``extra["toml"]``: more settings for one scenario (e.g. receive_processes).
        (storage / "dicomnode.toml").write_text("[jobs]\nworkers = 0\n" + str(self.extra.get("toml", "")))

    def command(self, storage: Path) -> list[str]:
        return [sys.executable, "-m", "dicomnode.cli.main", "run", "--config",
                str(storage / "dicomnode.toml"), "--data-dir", str(storage / "data"),
                "--aetitle", self.aetitle, "--port", str(self.port), "--bind", "127.0.0.1"]

    def wait_ready(self) -> None:
        # Wait for the log lines, not a probe connection (that would hold an association):
        # the receiver listening, and the worker-role child's scheduler started, so that
        # its start-up (imports: ~1 s of CPU) does not compete with the measured push.
        assert self.proc is not None
        log = (self.workdir / self.name).with_suffix(".log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_bytes()
            if b"listening as" in text and b"scheduler started" in text:
                time.sleep(0.5)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        raise TimeoutError("dicomnode did not start")


class StoreSCP(Peer):
    """dcmtk storescp; ``bit_preserving`` adds +B (stream to disk as received).

    It runs with ``TCP_NODELAY=1``: Debian's dcmtk leaves Nagle on, and a C-STORE-RSP
    written in two pieces then waits for the sender's delayed ACK (40 ms), which caps
    storescp at ~20 instances/s on one association (measured: 50 instances in 2.3 s
    as shipped, 0.09 s with TCP_NODELAY=1).  The peer should be at its best; dicomnode
    turns Nagle off on its own sockets.
    """

    def env(self) -> dict[str, str]:
        return {"TCP_NODELAY": "1"}

    def command(self, storage: Path) -> list[str]:
        cmd = ["/usr/bin/storescp", "--fork", "-aet", self.aetitle, "-od", str(storage)]
        if self.extra.get("bit_preserving"):
            cmd.append("+B")
        return [*cmd, str(self.port)]


class Orthanc(Peer):
    """Orthanc from Debian's package, with its storage fsync on (SyncStorageArea)."""

    def prepare(self, storage: Path) -> None:
        self.http_port = free_port()
        (storage / "orthanc.json").write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(storage / "db"),
            "IndexDirectory": str(storage / "db"), "DicomAet": self.aetitle,
            "DicomPort": self.port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "StorageCompression": False, "SyncStorageArea": True, "Plugins": [],
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        }))

    def command(self, storage: Path) -> list[str]:
        return ["/usr/sbin/Orthanc", str(storage / "orthanc.json")]


def all_peers(workdir: Path) -> list[Peer]:
    return [
        DicomNode("dicomnode", workdir),
        StoreSCP("storescp", workdir),
        StoreSCP("storescp+B", workdir, extra={"bit_preserving": True}),
        Orthanc("orthanc", workdir),
    ]
