"""Shared fixtures: free ports, dcmtk tools by path, a real Orthanc, a running node.

Real peers only (no mocks): Orthanc from Debian's ``orthanc`` package is started on
127.0.0.1 with its own temporary config and storage; dcmtk tools are used by their
absolute Debian paths, because pynetdicom installs its own ``storescu``/``echoscu``
console scripts that shadow dcmtk's on ``PATH``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE

DCMTK = Path("/usr/bin")
ORTHANC_BIN = Path("/usr/sbin/Orthanc")


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk (or dicom3tools) binary; skip loudly if absent."""
    path = DCMTK / tool
    if not path.exists():
        pytest.fail(f"{path} missing: run the README's test command (it installs dcmtk)")
    return str(path)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid``, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return out


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture
def port() -> int:
    return free_port()


# ---------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------


@dataclass
class OrthancServer:
    """A running Orthanc: DICOM on ``dicom_port`` (AE ``aetitle``), REST on ``http_port``."""

    aetitle: str
    dicom_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "dicomnode-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.aetitle,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "SyncStorageArea": True,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "StableAge": 1,
            **self.extra_config,
        }

    def start(self) -> None:
        """Start (or restart) Orthanc with the same storage."""
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self._config(), indent=1))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.http_port, 60, self.proc)
        wait_for_port(self.dicom_port, 60, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: Any) -> Any:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=120) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def instances(self) -> list[dict[str, Any]]:
        """Every instance Orthanc holds, with its main DICOM tags."""
        return [self.get(f"/instances/{i}") for i in self.get("/instances")]

    def sop_instance_uids(self) -> set[str]:
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.instances()}

    def file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc servers; each is stopped at the end of the test."""
    if not ORTHANC_BIN.exists():
        pytest.fail("Orthanc missing: run the README's test command (it installs orthanc)")
    started: list[OrthancServer] = []

    def make(
        aetitle: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        start: bool = True,
        **extra: Any,
    ) -> OrthancServer:
        server = OrthancServer(
            aetitle=aetitle,
            dicom_port=free_port(),
            http_port=free_port(),
            workdir=tmp_path_factory.mktemp("orthanc"),
            modalities=modalities or {},
            extra_config=extra,
        )
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """One running Orthanc (AE ``ORTHANC``)."""
    return orthanc_factory()


# ---------------------------------------------------------------------------
# The node, as a user starts it: ``dicomnode run`` in a subprocess.
# ---------------------------------------------------------------------------


@dataclass
class NodeProcess:
    """A ``dicomnode run`` subprocess with its own data directory and config."""

    data_dir: Path
    port: int
    aetitle: str = "DICOMNODE"
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def write_config(self) -> None:
        lines = []
        for section, values in self.config.items():
            if isinstance(values, list):
                for item in values:
                    lines.append(f"[[{section}]]")
                    lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items())
            else:
                lines.append(f"[{section}]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> None:
        self.write_config()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "dicomnode.cli.main", "-v", "run",
                "--config", str(self.config_path), "--data-dir", str(self.data_dir),
                "--aetitle", self.aetitle, "--port", str(self.port), "--bind", "127.0.0.1",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        if wait:
            self.wait_listening(offset)

    def wait_listening(self, offset: int = 0, timeout: float = 60) -> None:
        """Wait for the node's "listening" log line (a probe connection would hold an
        association slot until the ACSE timeout, skewing max-association tests)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                if b"listening as" in fh.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"node not listening after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``dicomnode ARGS --config … --data-dir …`` against this node's index."""
        cmd = [
            sys.executable, "-m", "dicomnode.cli.main", *args,
            "--config", str(self.config_path), "--data-dir", str(self.data_dir),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.env})
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Make (and by default start) node subprocesses; all are stopped after the test."""
    nodes: list[NodeProcess] = []

    def make(start: bool = True, name: str = "node", **kwargs: Any) -> NodeProcess:
        node = NodeProcess(data_dir=tmp_path / name, port=free_port(), **kwargs)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory: Callable[..., NodeProcess]) -> NodeProcess:
    """One running node on a free port with embedded defaults and a private data dir."""
    return node_factory()


def storescu(
    port: int, *files: str | Path, aetitle: str = "DICOMNODE", calling: str = "STORESCU",
    extra: tuple[str, ...] = (), timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """dcmtk ``storescu`` (Debian's, with Nagle on as shipped) to 127.0.0.1:``port``."""
    cmd = [dcmtk("storescu"), "-aet", calling, "-aec", aetitle, *extra, "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
