"""Fixtures of the scale-out tests: PostgreSQL (the storage tests' server), the ``sleepy`` module."""
from __future__ import annotations

from pathlib import Path

import pytest
from scaleout.cluster import module_env
from storage.conftest import postgres  # noqa: F401  (the storage tests' PostgreSQL server)


@pytest.fixture(scope="session")
def sleepy_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """The nodes' extra environment (entry point, model version, marks file) and the rules file."""
    root = tmp_path_factory.mktemp("scaleout-module")
    return module_env(root), root / "rules.toml"
