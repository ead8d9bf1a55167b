"""deploy/: the systemd unit verifies, the example config is complete and valid, compose is coherent.

``systemd-analyze verify`` needs the unit's ``ExecStart`` binary to exist; the test
verifies the shipped unit with only that path replaced by this machine's ``dicomnode``.
Debian's ``systemd`` package provides ``systemd-analyze``; it is installed here when
missing (the test runs as root in CI).  No Docker engine is available, so the
Dockerfile and compose file are checked by reading: the compose file parses, its
services and the node's settings from the environment are valid.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dicomnode.config import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "dicomnode.service"


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
                       env=env, capture_output=True, timeout=600)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze missing: install Debian's systemd package (deploy/test.sh)")
    return found


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run .*--data-dir (\S+)", text, re.M)
    assert exec_start and exec_start.group(1) == "/usr/local/bin/dicomnode"
    binary = shutil.which("dicomnode") or str(Path(sys.executable).with_name("dicomnode"))
    unit = tmp_path / "dicomnode.service"
    unit.write_text(text.replace(exec_start.group(1), binary, 1))
    res = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True,
                         timeout=120)
    # verify exits 0 even for unknown keys or bad values: it only warns, so no output is allowed.
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr

    options = dict(line.split("=", 1) for line in text.splitlines()
                   if "=" in line and not line.startswith("#"))
    assert options["ProtectSystem"] == "strict"
    assert options["ReadWritePaths"] == exec_start.group(2) == "/var/lib/dicomnode"
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID"):
        assert options[key] == "yes", key
    assert options["User"] == "dicomnode" and options["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"


def test_example_config_names_every_key_and_is_valid() -> None:
    path = DEPLOY / "dicomnode.toml"
    text = path.read_text()
    data = tomllib.loads(text)
    for section, field in Settings.model_fields.items():
        assert section in data, f"[{section}] missing from deploy/dicomnode.toml"
        model = field.annotation
        if section == "destinations":
            from dicomnode.config import Destination as model  # noqa: N813
            values = data[section][0]
        else:
            values = data[section]
        for key in model.model_fields:  # type: ignore[union-attr]
            # optional paths are shown commented out, with an example value
            assert key in values or re.search(rf"^# {key} = ", text, re.M), f"{section}.{key} missing"
    settings = load_settings(path)
    assert settings.metrics.port == 0 and settings.jobs.lease_seconds == 60.0


def test_compose_runs_receiver_workers_postgres_and_orthanc_on_valid_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # PyYAML is not an install requirement; it should be a test extra (setup.cfg).
    yaml = pytest.importorskip("yaml", reason="PyYAML missing: add pyyaml to the test extras")
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"receiver", "worker", "postgres", "orthanc"}
    assert services["receiver"]["command"][:3] == ["run", "--role", "receiver"]
    assert services["worker"]["command"][:3] == ["run", "--role", "worker"]
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    assert services["receiver"]["build"]["dockerfile"] == str(dockerfile.relative_to(DEPLOY.parent))
    copied = re.findall(r"^COPY (\S+)", dockerfile.read_text(), re.M)
    for src in copied:  # everything the image copies exists in the repository
        assert (DEPLOY.parent / src).exists(), src
    assert (DEPLOY / "docker" / "orthanc.json").is_file()
    for name in ("receiver", "worker"):
        env = {k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", v)
               for k, v in services[name]["environment"].items()}
        assert env["DICOMNODE_NODE__DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["DICOMNODE_NODE__DATABASE_URL"]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(DEPLOY / "dicomnode.toml")
        assert [(d.host, d.port) for d in settings.destinations] == [("orthanc", 4242)]
        assert settings.metrics.port == 9464
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "dicomnode"
