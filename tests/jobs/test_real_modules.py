"""The shipped rules and the real modules: ``dicomnode synth`` studies reach their module.

The model each module runs is its bundled one when that has landed; otherwise the
test registers a freshly initialised (untrained) version made from the module's own
default config, so the path under test — routing, the worker, the real module's
select/predict/render, results in the index — runs either way.  What the findings
say is the module's own tests' business, not this one's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import storescu
from sqlalchemy import select

from dicomnode.storage.models import Job, Result


def _model_version(module_name: str, out: Path) -> Path | None:
    """An untrained version of the module when it has no bundled model, else None."""
    from ai.core.models import save_model_version
    from ai.core.registry import get_module

    module = get_module(module_name)
    if (module.bundled_model_path() / "metadata.json").is_file():
        return None
    config = module.default_config()
    return save_model_version(out / module_name, module_name, module.network(config), config,
                              version="untrained-test", command="tests/jobs/test_real_modules.py")


@pytest.mark.slow
def test_synthetic_quality_studies_are_routed_to_quality_by_the_default_rules_and_get_results(
    node_factory: Any, index: Any, wait_for: Any, tmp_path: Path,
) -> None:
    from ai.core.registry import available_modules

    if "quality" not in available_modules():
        pytest.fail("the quality module is not installed (setup.cfg entry point)")
    out = tmp_path / "synth"
    made = subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "synth", "quality",
                           "--out", str(out), "--n", "2", "--seed", "7"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 2

    node = node_factory(start=False, config={
        "node": {"fsync": False},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "sweep_seconds": 0.5},
        "jobs": {"workers": 1, "max_attempts": 2, "retry_backoff_seconds": [1],
                 "torch_threads": 1},
    })
    node.write_config()
    version = _model_version("quality", tmp_path / "models")
    if version is not None:
        node.cli("models", "import", str(version), "--activate")
    node.start()
    assert storescu(node.port, *files).returncode == 0
    db = index(node)

    def finished() -> list[Job] | None:
        with db.session() as s:
            jobs = list(s.scalars(select(Job).where(Job.module == "quality")))
        return jobs if len(jobs) == 2 and all(j.state in ("done", "failed") for j in jobs) else None

    jobs = wait_for(finished, 240, "two quality jobs to finish")
    assert [j.state for j in jobs] == ["done", "done"], [j.error for j in jobs]
    assert {j.rule for j in jobs} == {"dsa-head-quality"}
    with db.session() as s:
        for job in jobs:
            results = list(s.scalars(select(Result).where(Result.job_fk == job.id)))
            assert "SR" in {r.kind for r in results}, job.summary
            assert all(r.module == "quality" for r in results)
            assert job.summary["findings"][0]["module"] == "quality"
    listed = json.loads(node.cli("jobs", "list", "--json", "--module", "quality").stdout)
    assert {j["state"] for j in listed} == {"done"}
