"""Sustained load: N studies of mixed kinds pushed back to back; nothing lost, queue drains.

The studies are fresh copies (new UIDs, see ``tests/e2e/pipeline.py``) of one synthetic
study per kind — a DSA run (quality), a frontal + lateral DSA pair (quality ×2, then
mtici), a coronary cine run (keyframes), a lumbar MR study with decoy series (spine)
and an unrelated CT (no module) — in rotation.  One sender pushes them with dcmtk's
storescu, one association per study, as fast as the node acknowledges; a writer
thread prepares the next copies meanwhile.  The node runs with its shipped job
settings (1 worker, 1 torch thread, fsync on) and sends every result to a real
Orthanc.

Checked at the end: every pushed instance is in the node's index, every study was
routed, every job ended ``done``, every result was delivered and Orthanc holds exactly
the delivered results; the queue and the outbox are empty.  Reported: studies/hour
(first push → last result delivered), the push rate alone, and peak memory of the node
process and of its worker processes (VmHWM), and of the whole tree (sum of VmRSS,
sampled every 0.5 s).

    python bench/load.py            # full: 500 studies
    python bench/load.py --quick    # CI: 20 studies
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import queue
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.append(str(ROOT / "tests"))  # after the installed packages: tests/ai must not shadow ai

from dicom_factory import ct_instance  # noqa: E402
from e2e import pipeline as P  # noqa: E402
from latency import DATA, SEED, SERIES_QUIET_S, STUDY_QUIET_S  # noqa: E402
from results_md import update_section  # noqa: E402

KINDS = ("quality", "mtici", "keyframes", "spine", "ct")


def templates() -> P.Templates:
    t = P.Templates()
    for module in KINDS[:-1]:
        t.add(module, P.cached_synth(module, DATA, 1, SEED))
    ct = DATA / "ct" / "ct.dcm"
    if not ct.exists():
        ct_instance(ct, BodyPartExamined="CHEST", SeriesDescription="CT chest",
                    StudyDescription="CT thorax")
    t.add("ct", [ct])
    return t


class MemoryWatch(threading.Thread):
    """Samples the node's process tree every 0.5 s: peaks per role and of the sum."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop_event = threading.Event()
        self.node_hwm = self.worker_hwm = self.tree_rss = 0.0
        self.workers_seen: set[int] = set()
        self.loads: list[float] = []

    def sample(self) -> None:
        mem = P.memory_mb(self.pid)
        if self.pid in mem:
            self.node_hwm = max(self.node_hwm, mem[self.pid]["hwm"])
        for p, m in mem.items():
            if m["role"] == "worker":
                self.workers_seen.add(p)
                self.worker_hwm = max(self.worker_hwm, m["hwm"])
        self.tree_rss = max(self.tree_rss, sum(m["rss"] for m in mem.values()))
        self.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            self.sample()


def run(n: int, work: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    t = templates()
    by_kind = {t.kinds[s]: s for s in t.studies}
    plan = [kinds[i % len(kinds)] for i in range(n)]
    ready: queue.Queue[tuple[str, str, list[Path]] | None] = queue.Queue(maxsize=4)

    def writer() -> None:  # copies are made while the previous study is being pushed
        for i, kind in enumerate(plan):
            uid, files = t.copy(by_kind[kind], work / "push" / f"{i:05d}")
            ready.put((kind, uid, files))
        ready.put(None)

    pushed: dict[str, tuple[str, int]] = {}
    with P.Stack(work, series_quiet=SERIES_QUIET_S, study_quiet=STUDY_QUIET_S, sweep=1.0,
                 fsync=True, torch_threads=1) as stack:
        assert stack.index is not None
        watch = MemoryWatch(stack.pid)
        watch.start()
        threading.Thread(target=writer, daemon=True).start()
        start = time.time()
        while (item := ready.get()) is not None:
            kind, uid, files = item
            P.push(stack.node.port, files)
            pushed[uid] = (kind, len(files))
            shutil.rmtree(files[0].parent, ignore_errors=True)
            if len(pushed) % 20 == 0:
                print(f"pushed {len(pushed)}/{n} studies in {time.time() - start:.0f} s", flush=True)
        push_s = time.time() - start
        outcomes = stack.index.wait_settled(pushed, 120 + 15 * n,
                                            on_poll=watch.sample)
        watch.sample()
        # Drained: the last job finished and the last result acknowledged by Orthanc.
        drained_s = max([d["delivered_at"] for o in outcomes.values() for r in o.results
                         for d in r["deliveries"] if d["delivered_at"]]
                        + [j["finished_at"] for o in outcomes.values() for j in o.jobs
                           if j["finished_at"]] + [start + push_s]) - start
        watch.stop_event.set()
        verdict = check(stack, pushed, outcomes)
        verdict.update(n=n, push_s=push_s, drained_s=drained_s,
                       node_hwm_mb=watch.node_hwm, worker_hwm_mb=watch.worker_hwm,
                       tree_rss_mb=watch.tree_rss, worker_processes=len(watch.workers_seen),
                       load=f"{min(watch.loads):.1f}–{max(watch.loads):.1f}")
    return verdict


def check(stack: P.Stack, pushed: dict[str, tuple[str, int]],
          outcomes: dict[str, P.StudyOutcome]) -> dict[str, Any]:
    """Nothing lost, every job done, every result delivered; counts per kind."""
    from sqlalchemy import func, select

    from dicomnode.storage.models import Delivery, Instance, Job, Series, Study

    assert stack.index is not None
    problems: list[str] = []
    with stack.index.db.session() as s:
        stored = dict(s.execute(
            select(Study.study_instance_uid, func.count(Instance.id))
            .join(Series, Series.study_fk == Study.id).join(Instance, Instance.series_fk == Series.id)
            .where(Series.is_result.is_(False)).group_by(Study.study_instance_uid)).all())
        open_jobs = s.scalar(select(func.count(Job.id)).where(Job.state.not_in(["done", "failed"])))
        open_deliveries = s.scalar(select(func.count(Delivery.id))
                                   .where(Delivery.state != "delivered"))
    lost = {u: (k, c, stored.get(u, 0)) for u, (k, c) in pushed.items() if stored.get(u, 0) != c}
    if lost:
        problems.append(f"{len(lost)} studies lost instances: {list(lost.items())[:5]}")
    if open_jobs or open_deliveries:
        problems.append(f"queue not drained: {open_jobs} jobs, {open_deliveries} deliveries open")
    jobs = Counter((j["module"], j["state"]) for o in outcomes.values() for j in o.jobs)
    failed = [(o.study_instance_uid, j["module"], j["error"]) for o in outcomes.values()
              for j in o.jobs if j["state"] != "done"]
    if failed:
        problems.append(f"{len(failed)} jobs failed: {failed[:5]}")
    no_result = Counter(j["module"] for o in outcomes.values() for j in o.jobs
                        if j["state"] == "done" and not any(r["job"] == j["id"] for r in o.results))
    reasons = Counter(j["reason"].split(";")[0][:80] for o in outcomes.values() for j in o.jobs
                      if j["state"] == "done" and not any(r["job"] == j["id"] for r in o.results))
    delivered = {r["sop_instance_uid"] for o in outcomes.values() for r in o.results}
    in_orthanc = stack.orthanc.sop_instance_uids()
    if in_orthanc != delivered:
        problems.append(f"Orthanc holds {len(in_orthanc)} objects, the node delivered "
                        f"{len(delivered)} ({len(delivered - in_orthanc)} missing)")
    ct_jobs = [o for o in outcomes.values() if pushed[o.study_instance_uid][0] == "ct" and o.jobs]
    if ct_jobs:
        problems.append(f"{len(ct_jobs)} CT studies were routed to a module")
    kinds = Counter(k for k, _ in pushed.values())
    return {"instances": sum(c for _, c in pushed.values()), "kinds": dict(kinds),
            "jobs": {f"{m} {s}": c for (m, s), c in sorted(jobs.items())},
            "done_without_result": dict(no_result), "no_result_reasons": dict(reasons),
            "results_delivered": len(delivered), "problems": problems}


def report(v: dict[str, Any], quick: bool, load: str) -> str:
    ok = "yes" if not v["problems"] else "NO: " + "; ".join(v["problems"])
    lines = [
        f"Measured {dt.date.today()} by `python bench/load.py{' --quick' if quick else ''}`: "
        f"{v['n']} studies ({', '.join(f'{c} {k}' for k, c in v['kinds'].items())}; "
        f"{v['instances']} instances) pushed back to back by dcmtk storescu, one association "
        "per study, to `dicomnode run` (shipped job settings: 1 worker process, 1 torch thread; "
        f"fsync on; quiet periods {SERIES_QUIET_S:g} s / {STUDY_QUIET_S:g} s) sending every result "
        f"to a real Orthanc. Load average during the run: {load} on 2 cores shared with other "
        "agents' training jobs, and worker processes run at nice 5, so throughput is "
        "pessimistic; re-run with the same command.",
        "",
        "| studies | pushed in (s) | push rate (studies/h) | drained in (s) | **studies/h** "
        "| results delivered | nothing lost, all delivered, queue drained | peak RSS node (MB) "
        "| peak RSS per worker process (MB) | peak RSS node + workers (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {v['n']} | {v['push_s']:.0f} | {3600 * v['n'] / v['push_s']:.0f} | "
        f"{v['drained_s']:.0f} | {3600 * v['n'] / v['drained_s']:.0f} | {v['results_delivered']} "
        f"| {ok} | {v['node_hwm_mb']:.0f} | {v['worker_hwm_mb']:.0f} | {v['tree_rss_mb']:.0f} |",
        "",
        "Jobs: " + ", ".join(f"{k}: {c}" for k, c in v["jobs"].items()) + ".",
    ]
    if v["done_without_result"]:
        lines.append("Jobs done without a result (the module selected nothing, with its reason): "
                     + ", ".join(f"{k}: {c}" for k, c in v["done_without_result"].items())
                     + " — " + "; ".join(f"“{r}…” ×{c}" for r, c in v["no_result_reasons"].items())
                     + ".")
    lines.append(f"Worker processes seen: {v['worker_processes']} (a worker process is replaced "
                 "after `jobs.max_jobs_per_process` = 25 jobs by a successor warmed beside it; peak RSS per "
                 "worker process is the largest VmHWM of any).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 studies (CI)")
    ap.add_argument("--dry-run", action="store_true", help="print the table, leave RESULTS.md alone")
    ap.add_argument("--n", type=int, default=None, help="studies (default 500, quick 20)")
    ap.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS,
                    help="study kinds in the rotation (default: all)")
    args, _ = ap.parse_known_args()  # bench/run passes every script the same arguments
    n = args.n or (20 if args.quick else 500)
    work = ROOT / "bench" / "out" / "load"
    verdict = run(n, work, tuple(args.kinds))
    text = report(verdict, args.quick, verdict["load"])
    print(text)
    (work / "load.json").write_text(json.dumps(verdict, indent=1))
    if not args.dry_run:
        update_section("Sustained load", text)
    if verdict["problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
