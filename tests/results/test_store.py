"""store_results: spool files, index rows, Delivery rows, retries, supersession."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from results.conftest import make_settings
from results.scenarios import keyframes, quality, spine
from sqlalchemy import select

from dicomnode.results.build import build_results
from dicomnode.results.srread import read_findings
from dicomnode.results.store import encode, store_results
from dicomnode.storage.db import Database, open_database
from dicomnode.storage.models import Delivery, Instance, Job, Result, Series


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield database
    database.dispose()


def _job(db: Database, key: str) -> int:
    with db.session() as s:
        job = Job(idempotency_key=key, study_instance_uid="1.2", module="spine")
        s.add(job)
        s.flush()
        return job.id


def test_results_are_written_to_the_spool_and_indexed_with_one_delivery_per_destination(
        db: Database, tmp_path: Path) -> None:
    scenario = keyframes()
    objects = build_results(scenario.findings, scenario.images, scenario.sources, make_settings())
    job = _job(db, "k1")
    stored = store_results(db, tmp_path / "spool", job, objects, ["pacs", "archive"])
    assert [s.sop_instance_uid for s in stored] == [o.sop_instance_uid for o in objects]
    assert all(s.created for s in stored)
    with db.session() as s:
        results = s.scalars(select(Result).order_by(Result.id)).all()
        assert [(r.kind, r.job_fk, r.module) for r in results] == [
            ("SC", job, "keyframes"), ("SR", job, "keyframes"), ("KO", job, "keyframes")]
        for row, obj in zip(results, objects, strict=True):
            path = tmp_path / "spool" / row.path
            data = path.read_bytes()
            assert pydicom.dcmread(path).SOPInstanceUID == obj.sop_instance_uid
            instance = s.scalars(select(Instance).where(
                Instance.sop_instance_uid == obj.sop_instance_uid)).one()
            assert (instance.path, instance.sha256) == (row.path, hashlib.sha256(data).hexdigest())
            assert obj.sop_instance_uid not in row.path  # hashed paths only
        deliveries = s.scalars(select(Delivery).order_by(Delivery.id)).all()
        assert [(d.result_fk, d.destination, d.state) for d in deliveries] == [
            (r.id, name, "pending") for r in results for name in ("pacs", "archive")]
        series = s.scalars(select(Series).where(Series.is_result.is_(True))).all()
        assert sorted(x.modality for x in series) == ["KO", "OT", "SR"]
        assert all(x.state == "complete" for x in series)  # no new routing for our own output
        sr = results[1]
        assert sr.findings["module"] == "keyframes"
        assert [f["tracking_id"] for f in sr.findings["findings"]] == [
            "Keyframes: start 7, apex 18, end 33"]
        # Per-frame confidences the SR cannot hold stay in the index.
        assert [m["confidence"] for m in sr.findings["findings"][0]["measurements"]] == [
            0.91, 0.86, 0.8]
    assert not list((tmp_path / "spool" / "tmp").iterdir())  # no temporary file left


def test_a_retried_job_stores_nothing_twice(db: Database, tmp_path: Path) -> None:
    scenario = keyframes()
    settings = make_settings()
    first = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    store_results(db, tmp_path, None, first, ["pacs"])
    again = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    stored = store_results(db, tmp_path, None, again, ["pacs", "archive"])
    assert not any(s.created for s in stored)
    with db.session() as s:
        assert s.scalar(select(Result.id).order_by(Result.id.desc())) == len(first)
        pairs = s.execute(select(Delivery.result_fk, Delivery.destination)).all()
        assert len(pairs) == len(set(pairs)) == 2 * len(first)  # only "archive" was added


def test_a_rerun_supersedes_the_old_report_and_its_images(db: Database, tmp_path: Path) -> None:
    scenario = spine()
    settings = make_settings()
    old_job, new_job = _job(db, "s1"), _job(db, "s2")
    old = build_results(scenario.findings, scenario.images, scenario.sources, settings)
    old_stored = store_results(db, tmp_path, old_job, old, ["pacs"])
    old_sr = next(s for s in old_stored if s.kind == "SR")
    header = pydicom.dcmread(tmp_path / old_sr.path, stop_before_pixels=True)
    new = build_results(scenario.findings, scenario.images, scenario.sources, settings,
                        predecessor=header)
    new_sr = next(o for o in new if o.kind == "SR")
    assert new_sr.dataset.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.sop_instance_uid
    store_results(db, tmp_path, new_job, new, ["pacs"])
    with db.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Result))}
    assert rows[old_sr.sop_instance_uid].superseded_by == new_sr.sop_instance_uid
    old_sc = next(s for s in old_stored if s.kind == "SC")
    new_sc = next(o for o in new if o.kind == "SC")
    assert new_sc.sop_instance_uid != old_sc.sop_instance_uid
    assert rows[old_sc.sop_instance_uid].superseded_by == new_sr.sop_instance_uid
    assert all(rows[o.sop_instance_uid].superseded_by == "" for o in new)


def test_encode_writes_a_part10_file() -> None:
    scenario = keyframes()
    sr = next(o for o in build_results(scenario.findings, [], scenario.sources, make_settings())
              if o.kind == "SR")
    data = encode(sr.dataset)
    assert data[128:132] == b"DICM"


def test_numpy_values_from_a_module_are_stored_as_plain_json(db: Database, tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    scenario = quality()
    findings = replace(scenario.findings, extra={"probabilities": np.array([0.25, 0.75]),
                                                 "best": np.float32(0.75)},
                       gate={"suitable": np.bool_(True)})
    first = replace(findings.findings[0], confidence=np.float32(0.5))
    findings = replace(findings, findings=(first, *findings.findings[1:]))
    objects = build_results(findings, [], scenario.sources, make_settings())
    store_results(db, tmp_path, None, objects, [])
    with db.session() as s:
        row = s.scalars(select(Result).where(Result.kind == "SR")).one()
        assert row.findings["extra"] == {"probabilities": [0.25, 0.75], "best": 0.75}
        assert row.findings["gate"] == {"suitable": True}
    sr = next(o.dataset for o in objects if o.kind == "SR")
    assert read_findings(sr)[0].confidence == 0.5
