"""The model registry: which versions of each module exist and which one is active.

Rows live in the index's ``model_version`` table.  Each module has at most one
active version; :func:`activate` and :func:`rollback` change it in one write
transaction that first locks the module's rows (``SELECT … FOR UPDATE`` on
PostgreSQL, the in-process write lock on SQLite), so two concurrent activations
cannot leave two versions active.  A job loads the version that is active when
it starts, and the SR names that version and its sha256.

``activated_at`` doubles as the activation history: the previously active version
is the inactive one activated most recently, which :func:`rollback` re-activates.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai.core.models import ModelIntegrityError, read_metadata, sha256_file
from dicomnode.storage.db import Database
from dicomnode.storage.models import ModelVersion, utcnow

logger = logging.getLogger(__name__)

SOURCE_BUNDLED = "bundled"
SOURCE_TRAINED = "trained"
SOURCE_IMPORTED = "imported"


class RegistryError(Exception):
    """A registry operation is impossible (unknown version, conflicting sha256 …)."""


class VersionNotFoundError(RegistryError, LookupError):
    """No such (module, version) in the registry."""


def _description(meta: dict[str, Any]) -> dict[str, Any]:
    training = dict(meta.get("training_data", {}))
    training.pop("history", None)  # per-epoch losses stay in metadata.json
    return {
        "changelog": meta.get("changelog", {}),
        "command": meta.get("command", ""),
        "created": meta.get("created", ""),
        "training_data": training,
        "description": meta.get("description", ""),
    }


def register_version(
    db: Database, path: Path | str, *, source: str = SOURCE_TRAINED, activate: bool = False
) -> ModelVersion:
    """Record the model version directory at ``path`` (inactive unless ``activate``).

    Registering the same (module, version, sha256) again is a no-op that returns the
    row (its path is updated if the directory moved).

    Raises
    ------
    ModelError
        ``path`` is not a model version.
    ModelIntegrityError
        The weights do not match the sha256 in ``metadata.json``.
    RegistryError
        The (module, version) is registered with other weights.
    """
    path = Path(path).resolve()
    meta = read_metadata(path)
    digest = sha256_file(path / str(meta.get("weights_file", "weights.safetensors")))
    if digest != meta["sha256"]:
        raise ModelIntegrityError(f"{path}: weights sha256 {digest} != metadata {meta['sha256']}")
    module, version = str(meta["module"]), str(meta["version"])
    with db.write() as session:
        row = _find(session, module, version)
        if row is not None:
            if row.sha256 != digest:
                raise RegistryError(
                    f"{module} {version} is registered with sha256 {row.sha256[:12]}…, "
                    f"{path} has {digest[:12]}…: give the new model another version"
                )
            row.path = str(path)
        else:
            row = ModelVersion(
                module=module, version=version, path=str(path), sha256=digest, source=source,
                is_active=False, metrics=dict(meta.get("metrics", {})),
                description=_description(meta),
            )
            session.add(row)
            session.flush()
            logger.info("registered %s model %s (%s, sha256 %s)", module, version, source,
                        digest[:12])
    if activate:
        return _activate(db, module, version)
    return row


def _find(session: Session, module: str, version: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.module == module, ModelVersion.version == version)
    ).first()


def list_versions(db: Database, module: str | None = None) -> list[ModelVersion]:
    """Registered versions (of ``module``, or all), by module then registration time."""
    stmt = select(ModelVersion).order_by(ModelVersion.module, ModelVersion.created_at,
                                         ModelVersion.id)
    if module is not None:
        stmt = stmt.where(ModelVersion.module == module)
    with db.session() as session:
        return list(session.scalars(stmt))


def get_version(db: Database, module: str, version: str) -> ModelVersion:
    """The row of (module, version); :class:`VersionNotFoundError` if absent."""
    with db.session() as session:
        row = _find(session, module, version)
    if row is None:
        raise VersionNotFoundError(f"no {module} model version {version!r} is registered")
    return row


def active_version(db: Database, module: str) -> ModelVersion | None:
    """The active version of ``module``, or None."""
    with db.session() as session:
        return session.scalars(
            select(ModelVersion).where(ModelVersion.module == module, ModelVersion.is_active)
        ).first()


def resolve_version(db: Database, module: str, version: str | None = None) -> ModelVersion:
    """``version`` of ``module`` if given, else the active one.

    Raises
    ------
    VersionNotFoundError
        The version is not registered, or none is active.
    """
    if version:
        return get_version(db, module, version)
    row = active_version(db, module)
    if row is None:
        raise VersionNotFoundError(f"{module} has no active model version")
    return row


def _lock_module(session: Session, module: str) -> list[ModelVersion]:
    # FOR UPDATE serialises activations on PostgreSQL; SQLite ignores it and relies on
    # Database.write()'s lock plus its single-writer transactions.
    return list(session.scalars(
        select(ModelVersion).where(ModelVersion.module == module).with_for_update()
    ))


def activate(db: Database, module: str, version: str) -> ModelVersion:
    """Make ``version`` the one active version of ``module``; returns its row."""
    with db.write() as session:
        rows = _lock_module(session, module)
        target = next((r for r in rows if r.version == version), None)
        if target is None:
            raise VersionNotFoundError(f"no {module} model version {version!r} is registered")
        for row in rows:
            if row is not target and row.is_active:
                row.is_active = False
        session.flush()  # deactivate first: a partial unique index would see two otherwise
        if not target.is_active:
            target.is_active = True
            target.activated_at = utcnow()
        logger.info("activated %s model %s", module, version)
        return target


def rollback(db: Database, module: str) -> ModelVersion:
    """Re-activate the version that was active before the current one.

    Raises
    ------
    RegistryError
        No version of ``module`` was active before.
    """
    with db.write() as session:
        rows = _lock_module(session, module)
        current = next((r for r in rows if r.is_active), None)
        previous = [r for r in rows if not r.is_active and r.activated_at is not None]
        if not previous:
            raise RegistryError(f"{module}: no previously active version to roll back to")
        target = max(previous, key=lambda r: (r.activated_at, r.id))
        if current is not None:
            current.is_active = False
            session.flush()
        target.is_active = True
        target.activated_at = utcnow()
        logger.info("rolled %s back from %s to %s", module,
                    current.version if current else "none", target.version)
        return target


def import_version(
    db: Database, path: Path | str, models_dir: Path, *, activate: bool = False
) -> ModelVersion:
    """Copy a model version directory into ``models_dir/<module>/<version>`` and register it.

    The copy keeps the registry independent of where the user's directory lives; its
    sha256 is checked after copying.
    """
    src = Path(path)
    meta = read_metadata(src)
    dest = Path(models_dir) / str(meta["module"]) / str(meta["version"])
    if dest.resolve() != src.resolve():
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".checkpoints", "*.tmp"))
    return register_version(db, dest, source=SOURCE_IMPORTED, activate=activate)


def ensure_bundled(db: Database, modules: list[str] | None = None) -> list[ModelVersion]:
    """Register each installed module's bundled model; activate it where none is active.

    Called at start-up and by the CLI, so a fresh install runs with the bundled
    models and an operator's later ``models activate`` is never overridden.
    Modules without a bundled model are skipped (logged).
    """
    from ai.core.registry import available_modules, get_module

    done = []
    for name in modules if modules is not None else available_modules():
        try:
            module = get_module(name)
            path = module.bundled_model_path()
            if not (path / "metadata.json").is_file():
                logger.warning("%s has no bundled model at %s", name, path)
                continue
            row = register_version(db, path, source=SOURCE_BUNDLED)
        except Exception as exc:  # one broken module must not stop the node's start-up
            logger.error("cannot register the bundled model of %s: %s", name, exc)
            continue
        if active_version(db, name) is None:
            row = activate(db, name, row.version)
        done.append(row)
    return done


# register_version's ``activate`` flag shadows the function inside it.
_activate = activate
