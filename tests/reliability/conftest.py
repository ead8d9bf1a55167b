"""Fixtures of the fault tests: the job tests' modules and rules, a node that delivers.

The node runs as ``dicomnode run`` in a subprocess (``tests/conftest.py``), routes
series named ``echo…`` to the test-only ``echo`` module (``tests/jobs/support``) and
delivers its results to one destination, ``pacs``.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jobs.conftest import _jobs_config, index, rules_file, test_modules, wait_for  # noqa: F401
from storage.conftest import postgres  # noqa: F401


@pytest.fixture
def pg_database_url(postgres: Any) -> str:  # noqa: F811
    """A new, empty database on the test PostgreSQL server (``postgres``); its URL."""
    from sqlalchemy import create_engine, text

    server = postgres
    name = f"rel{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(server.url.rsplit("/", 1)[0] + f"/{name}")


def delivering_config(rules: Path, port: int, aetitle: str, **node: Any) -> dict[str, Any]:
    """Short quiet periods, fast job and delivery retries, one destination."""
    config = _jobs_config(rules)
    config["node"].update(node)
    config["destinations"] = [{"name": "pacs", "aetitle": aetitle, "host": "127.0.0.1", "port": port}]
    config["delivery"] = {"retry_backoff_seconds": [1, 2], "max_attempts": 0}
    return config


@pytest.fixture
def delivering_node(node_factory: Callable[..., Any], test_modules: dict[str, str],  # noqa: F811
                    rules_file: Path) -> Callable[..., Any]:  # noqa: F811
    """``delivering_node(port, aetitle, start=True, **node_settings)``."""
    def make(port: int, aetitle: str, start: bool = True, name: str = "node",
             env: dict[str, str] | None = None, **node: Any) -> Any:
        return node_factory(start=start, name=name,
                            config=delivering_config(rules_file, port, aetitle, **node),
                            env={**test_modules, **(env or {})})

    return make
