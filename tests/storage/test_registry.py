"""The model registry over the index (SQLite; PostgreSQL parametrisation comes with the lead's fixture)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai.core.models import ModelIntegrityError, read_metadata, save_model_version
from ai.core.registry import get_module
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.registry import (
    RegistryError,
    VersionNotFoundError,
    activate,
    active_version,
    ensure_bundled,
    get_version,
    import_version,
    list_versions,
    register_version,
    resolve_version,
    rollback,
)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False)


def make_version(root: Path, version: str, module: str = "toy", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    return save_model_version(root / version, module, net, {"network": {}}, version=version,
                              metrics={"auc": 0.9}, command=f"make {version}")


def test_a_registered_version_is_inactive_and_keeps_its_metadata(db: Database, tmp_path: Path) -> None:
    row = register_version(db, make_version(tmp_path, "1"))
    assert (row.module, row.version, row.is_active, row.source) == ("toy", "1", False, "trained")
    assert row.metrics == {"auc": 0.9} and row.description["command"] == "make 1"
    assert active_version(db, "toy") is None
    assert [r.version for r in list_versions(db, "toy")] == ["1"]


def test_registering_twice_is_a_no_op(db: Database, tmp_path: Path) -> None:
    path = make_version(tmp_path, "1")
    register_version(db, path)
    register_version(db, path)
    assert len(list_versions(db)) == 1


def test_same_version_with_other_weights_is_refused(db: Database, tmp_path: Path) -> None:
    register_version(db, make_version(tmp_path / "a", "1", seed=1))
    with pytest.raises(RegistryError, match="another version"):
        register_version(db, make_version(tmp_path / "b", "1", seed=2))


def test_tampered_weights_are_not_registered(db: Database, tmp_path: Path) -> None:
    path = make_version(tmp_path, "1")
    meta = json.loads((path / "metadata.json").read_text())
    meta["sha256"] = "0" * 64
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError):
        register_version(db, path)


def test_activate_keeps_one_active_version_per_module(db: Database, tmp_path: Path) -> None:
    for v in ("1", "2", "3"):
        register_version(db, make_version(tmp_path, v, seed=int(v)))
    register_version(db, make_version(tmp_path / "other", "1", module="other"), activate=True)
    activate(db, "toy", "1")
    activate(db, "toy", "3")
    rows = list_versions(db, "toy")
    assert [r.version for r in rows if r.is_active] == ["3"]
    assert active_version(db, "toy").version == "3"  # type: ignore[union-attr]
    assert active_version(db, "other").version == "1"  # type: ignore[union-attr]


def test_rollback_reactivates_the_previous_version(db: Database, tmp_path: Path) -> None:
    for v in ("1", "2", "3"):
        register_version(db, make_version(tmp_path, v, seed=int(v)))
    with pytest.raises(RegistryError):
        rollback(db, "toy")
    activate(db, "toy", "2")
    activate(db, "toy", "3")
    assert rollback(db, "toy").version == "2"
    assert active_version(db, "toy").version == "2"  # type: ignore[union-attr]
    assert rollback(db, "toy").version == "3"  # a second rollback undoes the first


def test_unknown_versions_are_reported(db: Database, tmp_path: Path) -> None:
    with pytest.raises(VersionNotFoundError):
        activate(db, "toy", "9")
    with pytest.raises(VersionNotFoundError):
        get_version(db, "toy", "9")
    with pytest.raises(VersionNotFoundError, match="no active"):
        resolve_version(db, "toy")


def test_import_copies_into_the_models_directory(db: Database, tmp_path: Path) -> None:
    src = make_version(tmp_path / "usb", "7")
    row = import_version(db, src, tmp_path / "models", activate=True)
    assert Path(row.path) == (tmp_path / "models" / "toy" / "7").resolve()
    assert (Path(row.path) / "weights.safetensors").is_file()
    assert row.source == "imported" and row.is_active


def test_bundled_models_are_registered_and_activated_on_a_fresh_index(db: Database) -> None:
    rows = ensure_bundled(db, ["quality"])
    assert [r.module for r in rows] == ["quality"]
    active = active_version(db, "quality")
    assert active is not None and active.source == "bundled"


def test_ensure_bundled_never_overrides_an_operator_choice(db: Database, tmp_path: Path) -> None:
    ensure_bundled(db, ["quality"])
    bundled = active_version(db, "quality")
    assert bundled is not None
    meta = read_metadata(Path(bundled.path))
    network = get_module("quality").network(meta["config"])
    other = save_model_version(tmp_path / "q2", "quality", network, meta["config"],
                               version="operator")
    register_version(db, other, activate=True)
    ensure_bundled(db, ["quality"])
    assert active_version(db, "quality").version == "operator"  # type: ignore[union-attr]
