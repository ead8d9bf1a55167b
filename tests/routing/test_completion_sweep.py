"""The completion sweep on an index filled by the real ingest path, with time stepped by hand."""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import make_dataset, uid, write
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import RoutingSettings
from dicomnode.routing.completion import sweep
from dicomnode.routing.router import Route
from dicomnode.routing.rules import load_rules
from dicomnode.storage.db import open_database
from dicomnode.storage.ingest import Ingestor
from dicomnode.storage.models import Series, Study, utcnow
from dicomnode.storage.spool import Spool

TIMERS = RoutingSettings(series_quiet_seconds=10, study_quiet_seconds=30)


class Index:
    """An index and spool with an ingest helper and a recording ``enqueue``."""

    def __init__(self, root: Path) -> None:
        self.db = open_database(f"sqlite:///{root / 'index.sqlite'}", fsync=False)
        self.spool = Spool(root / "spool", fsync=False)
        self.ingestor = Ingestor(self.db, self.spool)
        self.root = root
        self.routed: list[tuple[str, int, list[Route]]] = []

    def ingest(self, is_result: bool = False, **kw: Any) -> str:
        path = write(make_dataset(rows=16, columns=16, **kw), self.root / "in" / f"{uid()}.dcm")
        tmp = self.spool.new_temp_path()
        shutil.copy(path, tmp)
        data = tmp.read_bytes()
        self.ingestor.ingest(tmp, hashlib.sha256(data).hexdigest(), len(data),
                             context_sop_class=str(kw.get("sop_class", "1.2.840.10008.5.1.4.1.1.4")),
                             transfer_syntax="1.2.840.10008.1.2.1", is_result=is_result)
        return path.name

    def enqueue(self, session: Session, study: Study, generation: int,
                routes: Sequence[Route]) -> list[int]:
        self.routed.append((study.study_instance_uid, generation, list(routes)))
        return []

    def sweep(self, after: float) -> Any:
        rules = load_rules(None, installed=("quality", "mtici", "keyframes", "spine"))
        return sweep(self.db, TIMERS, rules, self.enqueue,
                     utcnow() + dt.timedelta(seconds=after))

    def state(self, study: str) -> tuple[str, int]:
        with self.db.session() as s:
            row = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
            return row.state, row.generation


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(tmp_path)
    yield idx
    idx.db.dispose()


def test_a_series_with_a_known_count_completes_when_the_last_instance_arrives(index: Index) -> None:
    study, series = uid(), uid()
    for i in (1, 2):
        index.ingest(study_uid=study, series_uid=series, instance_number=i,
                     NumberOfSeriesRelatedInstances=3)
    assert index.sweep(after=0).series_completed == 0
    index.ingest(study_uid=study, series_uid=series, instance_number=3,
                 NumberOfSeriesRelatedInstances=3)
    assert index.sweep(after=0).series_completed == 1  # no quiet period needed
    assert index.state(study) == ("receiving", 0)  # the study still waits for its own


def test_a_study_completes_after_its_quiet_period_and_is_routed_once(index: Index) -> None:
    study = uid()
    index.ingest(study_uid=study, modality="MR")
    assert index.sweep(after=9).idle
    report = index.sweep(after=11)  # series quiet, study not yet
    assert report.series_completed == 1 and not report.studies_completed
    index.ingest(study_uid=study, modality="MR")  # a new series resets the study's quiet period
    assert not index.sweep(after=29).studies_completed
    report = index.sweep(after=31)
    assert report.studies_completed == [study] and list(report.routed) == [study]
    assert index.state(study) == ("routed", 1)
    assert index.sweep(after=300).idle  # routed once, not again
    assert [(u, g) for u, g, _ in index.routed] == [(study, 1)]


def test_a_late_instance_routes_the_study_again_as_the_next_generation(index: Index) -> None:
    study, series = uid(), uid()
    index.ingest(study_uid=study, series_uid=series)
    index.sweep(after=31)
    assert index.state(study) == ("routed", 1)
    index.ingest(study_uid=study, series_uid=series, instance_number=2)
    assert index.state(study) == ("receiving", 1)
    with index.db.session() as s:
        assert s.scalars(select(Series.state).where(Series.series_instance_uid == series)).one() == "open"
    index.sweep(after=31)
    assert index.state(study) == ("routed", 2)
    assert [(u, g) for u, g, _ in index.routed] == [(study, 1), (study, 2)]


def test_the_nodes_own_results_arriving_in_a_study_do_not_route_it_again(index: Index) -> None:
    study = uid()
    index.ingest(study_uid=study)
    index.sweep(after=31)
    # A result series indexed through the receiving path re-opens the study ...
    index.ingest(study_uid=study, is_result=True, modality="OT")
    assert index.state(study)[0] == "receiving"
    # ... and the next sweep puts it back, without a new generation or new jobs.
    report = index.sweep(after=0)
    assert report.studies_restored == [study] and not report.routed
    assert index.state(study) == ("routed", 1)


def test_routing_evaluates_the_rules_on_the_complete_study(index: Index) -> None:
    from pydicom.uid import XRayAngiographicImageStorage

    study = uid()
    index.ingest(study_uid=study, sop_class=XRayAngiographicImageStorage, modality="XA", frames=4,
                 bits=8, ImageType=["DERIVED", "PRIMARY", "SUBTRACTION"], BodyPartExamined="HEAD",
                 PositionerPrimaryAngle=0.0)
    index.ingest(study_uid=study, modality="MR")
    index.sweep(after=31)
    ((_, _, routes),) = index.routed
    assert [(r.rule, r.modules) for r in routes] == [("dsa-head-quality", ("quality",))]
    assert len(routes[0].series_uids) == 1
