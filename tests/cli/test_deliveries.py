"""``dicomnode deliveries list|retry`` on a real index (SQLite, migrated by the CLI)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from dicomnode.storage.db import open_database
from dicomnode.storage.models import Delivery, Result


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli.main", *args, "--data-dir",
                           str(data_dir)], capture_output=True, text=True, timeout=120)


def test_failed_deliveries_are_listed_and_queued_again_by_the_operator(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False)
    with db.write() as s:
        for i, (dest, state) in enumerate([("pacs", "failed"), ("pacs", "delivered"),
                                           ("archive", "failed")]):
            r = Result(study_instance_uid="1.2.3", module="quality", kind="SR",
                       sop_instance_uid=f"1.2.3.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                       series_instance_uid="1.2.3.9", path=f"r/{i}.dcm")
            s.add(r)
            s.flush()
            s.add(Delivery(result_fk=r.id, destination=dest, state=state, attempts=5,
                           last_status=0xA700 if state == "failed" else 0,
                           last_error="refused: 0xA700" if state == "failed" else ""))
    db.dispose()

    listed = _cli(tmp_path, "deliveries", "list", "--state", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted((r["destination"], r["sop_instance_uid"]) for r in rows) == \
        [("archive", "1.2.3.2"), ("pacs", "1.2.3.0")]
    assert all(r["last_error"] == "refused: 0xA700" for r in rows)

    retried = _cli(tmp_path, "deliveries", "retry", "--destination", "pacs", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"requeued": 1, "destination": "pacs"}

    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}", fsync=False)
    with db.session() as s:
        state = {r.sop_instance_uid: (d.state, d.attempts) for d, r in s.execute(
            select(Delivery, Result).join(Result, Result.id == Delivery.result_fk)).all()}
    db.dispose()
    # Only the pacs row that had failed is pending again, its attempts reset.
    assert state == {"1.2.3.0": ("pending", 0), "1.2.3.1": ("delivered", 5),
                     "1.2.3.2": ("failed", 5)}
    bad = _cli(tmp_path, "deliveries", "list", "--state", "lost")
    assert bad.returncode == 2 and "--state must be one of" in bad.stdout + bad.stderr
