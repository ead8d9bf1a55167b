"""The shipped rules and the real modules: ``dicomnode synth`` studies reach their modules.

The model each module runs is its bundled one when that has landed; otherwise the
test registers a freshly initialised (untrained) version made from the module's own
default config, so the path under test — routing, the worker, the real module's
select/predict/render, results in the index — runs either way.  What the findings
say is the module's own tests' business, not this one's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import storescu
from sqlalchemy import select

from dicomnode.storage.models import Delivery, Job, Result


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


def _synth(module: str, out: Path, n: int) -> list[Path]:
    """What ``dicomnode synth MODULE --out OUT --n N --seed 7`` writes (done in-process:
    the test already has torch imported, a CLI run would import it again)."""
    from ai.core.registry import get_module

    mod = get_module(module)
    mod.write_dicom(mod.synthetic(n, 7), out)
    return sorted(out.rglob("*.dcm"))


@pytest.mark.slow
def test_synthetic_dsa_studies_reach_quality_then_mtici_and_the_results_reach_the_pacs(
    node_factory: Any, orthanc: Any, index: Any, wait_for: Any, tmp_path: Path,
) -> None:
    from ai.core.registry import available_modules

    for name in ("quality", "mtici"):
        if name not in available_modules():
            pytest.fail(f"the {name} module is not installed (setup.cfg entry point)")
    runs = _synth("quality", tmp_path / "quality", 2)      # two studies of one run each
    pair = _synth("mtici", tmp_path / "mtici", 1)          # one study: frontal + lateral run
    assert len(runs) == 2 and len(pair) == 2

    node = node_factory(start=False, config={
        "node": {"fsync": False},
        "routing": {"series_quiet_seconds": 1, "study_quiet_seconds": 2, "sweep_seconds": 0.5},
        "jobs": {"workers": 1, "max_attempts": 2, "retry_backoff_seconds": [1],
                 "torch_threads": 1},
        "destinations": [{"name": "pacs", "aetitle": orthanc.aetitle, "host": "127.0.0.1",
                          "port": orthanc.dicom_port}],
    })
    from dicomnode.storage.db import open_database
    from dicomnode.storage.registry import import_version

    index_db = open_database(f"sqlite:///{node.data_dir / 'index.sqlite'}", fsync=False)
    for name in ("quality", "mtici"):  # what `dicomnode models import --activate` does
        version = _model_version(name, tmp_path / "models")
        if version is not None:
            import_version(index_db, version, node.data_dir / "models", activate=True)
    index_db.dispose()
    node.start()
    assert storescu(node.port, *runs, *pair).returncode == 0
    db = index(node)

    def finished() -> list[Job] | None:
        with db.session() as s:
            jobs = list(s.scalars(select(Job).order_by(Job.id)))
        return jobs if len(jobs) == 5 and all(j.state in ("done", "failed") for j in jobs) else None

    jobs = wait_for(finished, 300, "four quality jobs and one mtici job to finish")
    assert [j.state for j in jobs] == ["done"] * 5, [(j.module, j.error) for j in jobs]
    quality = [j for j in jobs if j.module == "quality"]
    (mtici,) = [j for j in jobs if j.module == "mtici"]
    assert len(quality) == 4 and {j.rule for j in quality} == {"dsa-head-quality"}
    assert mtici.rule == "dsa-head-mtici" and mtici.summary["depends_on"] == ["quality"]
    pair_quality = [j for j in quality if j.study_instance_uid == mtici.study_instance_uid]
    assert len(pair_quality) == 2
    assert all(mtici.started_at >= j.finished_at for j in pair_quality)  # mtici after quality
    # mtici either graded the pair or said why not (e.g. a run rated unusable by quality).
    assert mtici.summary.get("findings") or mtici.reason

    with db.session() as s:
        results = list(s.scalars(select(Result)))
        for job in quality:
            kinds = {r.kind for r in results if r.job_fk == job.id}
            assert "SR" in kinds and job.summary["findings"][0]["module"] == "quality"
        deliveries = list(s.scalars(select(Delivery)))
    assert deliveries and len(deliveries) == len(results)

    # The outbox (a timed job of the scheduler) sends every result to the PACS.
    wait_for(lambda: {r.sop_instance_uid for r in results} <= orthanc.sop_instance_uids(), 120,
             "every result object to be in Orthanc")
    with db.session() as s:
        assert set(s.scalars(select(Delivery.state))) == {"delivered"}
    listed = json.loads(node.cli("jobs", "list", "--json").stdout)
    assert {(j["module"], j["state"]) for j in listed} == {("quality", "done"), ("mtici", "done")}
