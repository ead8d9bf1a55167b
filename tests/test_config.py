"""Settings: embedded defaults < TOML file < DICOMNODE_* environment; bad keys named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.config import load_settings
from dicomnode.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DICOMNODE_"):
            monkeypatch.delenv(key)


def test_no_file_gives_the_embedded_defaults() -> None:
    s = load_settings()
    assert (s.node.aetitle, s.node.port) == ("DICOMNODE", 11112)
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("index.sqlite")
    assert s.destinations == []


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dicomnode.toml"
    cfg.write_text('[node]\naetitle = "FROMFILE"\nport = 4000\n[routing]\nseries_quiet_seconds = 5\n'
                   '[[destinations]]\nname = "pacs"\naetitle = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n')
    monkeypatch.setenv("DICOMNODE_ROUTING__SERIES_QUIET_SECONDS", "2")
    monkeypatch.setenv("DICOMNODE_NODE__ALLOWED_CALLING", '["PACS@10.0.0.5"]')
    s = load_settings(cfg)
    assert s.node.aetitle == "FROMFILE" and s.node.port == 4000
    assert s.routing.series_quiet_seconds == 2
    assert s.node.allowed_calling == ["PACS@10.0.0.5"]
    assert s.destination("pacs").port == 4242


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\naetitle = \"WAY_TOO_LONG_AE_TITLE\"\n", "node.aetitle"),
        ("[node]\nprot = 104\n", "node.prot: unknown key"),
        ("[routing]\nseries_quiet_seconds = \"soon\"\n", "routing.series_quiet_seconds"),
        ("[[destinations]]\nname = \"pacs\"\nhost = \"h\"\nport = 1\n", "destinations.0.aetitle"),
        ("[node\n", "dicomnode.toml"),
    ],
)
def test_a_bad_key_is_named_in_the_error(tmp_path: Path, toml: str, named: str) -> None:
    cfg = tmp_path / "dicomnode.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(cfg)


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_NODE__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"node\.port"):
        load_settings()


def test_config_check_exits_3_with_the_key_named(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[jobs]\nworkers = -1\n")
    res = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "config", "check", "--config",
                          str(cfg)], capture_output=True, text=True)
    assert res.returncode == 3
    assert "jobs.workers" in res.stderr


def test_run_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[node]\nmax_associations = 0\n")
    res = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "run", "--config", str(cfg),
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "node.max_associations" in res.stderr
