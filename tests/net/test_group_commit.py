"""The receiver's index writes: concurrent C-STOREs share a commit, a failing one fails alone."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from dicomnode.storage.db import open_database
from dicomnode.storage.groupcommit import GroupCommit
from dicomnode.storage.models import Event


def test_writes_queued_behind_a_commit_share_the_next_one_and_a_failure_stays_alone(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    group = GroupCommit(db)
    leader_in = threading.Event()
    errors: dict[str, BaseException] = {}

    def write(kind: str, slow: bool = False, fail: bool = False) -> Any:
        def run(session: Any) -> str:
            session.add(Event(kind=kind, detail={}))
            if slow:  # the first batch is committing while the others queue up
                leader_in.set()
                time.sleep(0.5)
            if fail:
                raise ValueError(kind)
            return kind
        return run

    def call(kind: str, **kw: bool) -> None:
        try:
            assert group.run(write(kind, **kw)) == kind
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors[kind] = exc

    first = threading.Thread(target=call, args=("first",), kwargs={"slow": True})
    first.start()
    assert leader_in.wait(10)
    commits.clear()
    others = [threading.Thread(target=call, args=(f"w{i}",), kwargs={"fail": i == 3}) for i in range(6)]
    for t in others:
        t.start()
    time.sleep(0.2)  # all six are queued behind the slow first batch
    for t in [first, *others]:
        t.join(20)
    committed = len(commits)
    with db.session() as s:
        kinds = set(s.scalars(select(Event.kind)))
    db.dispose()
    assert set(errors) == {"w3"} and isinstance(errors["w3"], ValueError)
    assert kinds == {"first", "w0", "w1", "w2", "w4", "w5"}
    # first's own commit, the shared batch (rolled back by w3, no commit), then one each.
    assert committed == 1 + 6 - 1


def test_writes_behind_a_commit_are_committed_together(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    group = GroupCommit(db)
    leader_in = threading.Event()

    def slow(session: Any) -> None:
        session.add(Event(kind="slow", detail={}))
        leader_in.set()
        time.sleep(0.5)

    first = threading.Thread(target=group.run, args=(slow,))
    first.start()
    assert leader_in.wait(10)
    commits.clear()
    others = [threading.Thread(target=group.run, args=(lambda s, i=i: s.add(Event(kind=f"w{i}", detail={})),))
              for i in range(6)]
    for t in others:
        t.start()
    time.sleep(0.2)
    for t in [first, *others]:
        t.join(20)
    committed = len(commits)
    with db.session() as s:
        count = len(s.scalars(select(Event.kind)).all())
    db.dispose()
    assert count == 7
    assert committed == 2  # the slow one's, then all six in one


def test_one_instance_twice_in_a_batch_is_indexed_once_the_later_replacing_the_earlier(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    from dicomnode.storage.ingest import Ingestor
    from dicomnode.storage.models import Instance
    from dicomnode.storage.spool import Spool

    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    ingestor = Ingestor(db, Spool(tmp_path / "spool"))
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "MR"
    leader_in = threading.Event()
    results: dict[str, Any] = {}

    def slow(session: Any) -> None:
        session.add(Event(kind="slow", detail={}))
        leader_in.set()
        time.sleep(0.5)

    def index(path: str) -> None:
        results[path] = ingestor.group.run(lambda s: ingestor._index(
            s, ds, path, path[-1] * 64, 1, "1.2.840.10008.1.2.1", "A", False))

    first = threading.Thread(target=ingestor.group.run, args=(slow,))
    first.start()
    assert leader_in.wait(10)
    twice = [threading.Thread(target=index, args=(p,)) for p in ("a/x-1.dcm", "a/x-2.dcm")]
    for t in twice:
        t.start()
    time.sleep(0.2)  # both queued behind the slow batch: they share the next one
    for t in [first, *twice]:
        t.join(20)
    with db.session() as s:
        rows = s.scalars(select(Instance.path)).all()
    db.dispose()
    assert len(rows) == 1
    later = rows[0]
    earlier = "a/x-1.dcm" if later == "a/x-2.dcm" else "a/x-2.dcm"
    assert results == {earlier: None, later: earlier}  # the later one reports the path it replaced
