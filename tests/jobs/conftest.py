"""Fixtures of the job tests: test-only AI modules and a node that routes to them.

The test modules (``support/dicomnode_testmodules.py``) are declared as
``dicomnode.modules`` entry points by a ``*.dist-info`` directory written into a
temporary directory; the node subprocess gets that directory on ``PYTHONPATH`` and so
discovers them exactly as it discovers a site's own module.  The test process itself
never has them on its path.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import poll_until
from storage.conftest import postgres  # noqa: F401  (the storage tests' PostgreSQL server)

SUPPORT = Path(__file__).with_name("support")

#: Series descriptions route to the module of the same name; "chain" studies also get
#: the study-level ``after`` module, which waits for ``echo``.
RULES = """
[[rules]]
name = "to-echo"
modules = ["echo"]
[rules.match]
series_description = { regex = "^echo" }

[[rules]]
name = "to-slow"
modules = ["slow"]
[rules.match]
series_description = { regex = "^slow" }

[[rules]]
name = "to-raising"
modules = ["raising"]
[rules.match]
series_description = { regex = "^raising" }

[[rules]]
name = "to-hog"
modules = ["hog"]
[rules.match]
series_description = { regex = "^hog" }

[[rules]]
name = "to-killed"
modules = ["killed"]
[rules.match]
series_description = { regex = "^killed" }

[[rules]]
name = "to-picky"
modules = ["picky"]
[rules.match]
series_description = { regex = "^picky" }

[[rules]]
name = "chain-after-echo"
level = "study"
modules = ["after"]
[rules.match]
study_description = { regex = "chain" }
[[rules.requires]]
label = "an echo series"
rule = "to-echo"
"""


@pytest.fixture(scope="session")
def test_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Entry points + model versions of the test modules; returns the node's extra env."""
    sys.path.insert(0, str(SUPPORT))
    try:
        import dicomnode_testmodules as tm
    finally:
        sys.path.remove(str(SUPPORT))
    from ai.core.models import save_model_version

    root = tmp_path_factory.mktemp("testmodules")
    dist = root / "site" / "dicomnode_testmodules-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dicomnode-testmodules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[dicomnode.modules]\n" + "".join(f"{k} = {v}\n" for k, v in tm.ENTRY_POINTS.items()))
    for name in tm.ENTRY_POINTS:
        torch.manual_seed(0)
        net = torch.nn.Linear(2, 2)
        with torch.no_grad():  # mean intensity decides: p(diagnostic) grows with it
            net.weight.copy_(torch.tensor([[-4.0, 0.0], [4.0, 0.0]]))
            net.bias.zero_()
        save_model_version(root / "models" / name, name, net, {"network": {}}, version="test-1",
                           command="tests/jobs/conftest.py")
    return {
        "PYTHONPATH": f"{root / 'site'}:{SUPPORT}",
        "DICOMNODE_TESTMODULE_MODELS": str(root / "models"),
    }


def _jobs_config(rules_file: Path, **jobs: Any) -> dict[str, Any]:
    """A node config with short quiet periods and fast retries, routing to the test modules."""
    return {
        "node": {"fsync": False},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "sweep_seconds": 0.5,
                    "rules_file": str(rules_file)},
        "jobs": {"workers": 1, "max_attempts": 3, "retry_backoff_seconds": [1, 2],
                 "job_timeout_seconds": 120, "torch_threads": 1, **jobs},
    }


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(check, timeout, what)``: poll until ``check()`` is truthy, else fail naming ``what``."""
    return poll_until


@pytest.fixture
def jobs_node(node_factory: Callable[..., Any], test_modules: dict[str, str], rules_file: Path,
              tmp_path: Path) -> Callable[..., Any]:
    """``jobs_node(name="node", start=True, **jobs_settings)``: a node routing to the test modules.

    The node's ``marks`` attribute is the file the test modules append start/end lines to.
    """
    def make(name: str = "node", start: bool = True, env: dict[str, str] | None = None,
             **jobs: Any) -> Any:
        marks = tmp_path / f"{name}-marks.txt"
        node = node_factory(start=start, name=name, config=_jobs_config(rules_file, **jobs),
                            env={**test_modules, "DICOMNODE_TESTMODULE_MARKS": str(marks), **(env or {})})
        node.marks = marks
        return node

    return make


@pytest.fixture
def index() -> Iterator[Callable[[Any], Any]]:
    """``index(node)``: the node's index database, opened read/write from the test."""
    from dicomnode.storage.db import open_database

    opened: dict[str, Any] = {}

    def get(node: Any) -> Any:
        url = f"sqlite:///{node.data_dir / 'index.sqlite'}"
        if url not in opened:
            opened[url] = open_database(url, fsync=False, upgrade=False)
        return opened[url]

    yield get
    for db in opened.values():
        db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty, migrated index on SQLite and on PostgreSQL (a database of its own)."""
    import os

    from sqlalchemy import create_engine, text

    from dicomnode.storage.db import open_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        server = request.getfixturevalue("postgres")
        name = f"j{os.getpid()}_{time.monotonic_ns()}"
        admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
    db = open_database(url, fsync=False)
    yield db
    db.dispose()
