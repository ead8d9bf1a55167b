"""Receive throughput and memory: dicomnode against storescp, storescp +B and Orthanc.

Same data, same run, peers in rotated order, ``--repeats`` repeats; each repeat gives
a ratio dicomnode / peer, and the table reports the median of those per-repeat
ratios (robust to the machine's background load, which hits all peers alike).
The sender is dcmtk's ``storescu`` with Nagle off (``TCP_NODELAY=1``), except in the
``nagle`` scenario, which uses Debian's storescu as shipped.

    python bench/receive.py            # full: ≥ 3 repeats, incl. the 2 GB run
    python bench/receive.py --quick    # CI: small data, 2 repeats, < 2 minutes
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datagen import mr_instances, xa_run  # noqa: E402
from peers import ROOT, Peer, all_peers  # noqa: E402
from results_md import update_section  # noqa: E402


@dataclass
class Scenario:
    """Files to push, in ``associations`` parallel storescu processes."""

    name: str
    label: str
    files: list[Path]
    associations: int = 1
    nagle: bool = False
    #: More dicomnode settings for this scenario (TOML).
    node_toml: str = ""
    #: Issue #10's target: (peer, ratio dicomnode must reach against it).
    target: tuple[str, float] = ("orthanc", 1.0)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def push(peer: Peer, scenario: Scenario) -> float:
    """Seconds to push the scenario's files to ``peer`` (sender wall time)."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if not scenario.nagle:
        env["TCP_NODELAY"] = "1"  # dcmtk: disable Nagle on the sender
    chunks = [scenario.files[i::scenario.associations] for i in range(scenario.associations)]

    def one(files: list[Path]) -> None:
        res = subprocess.run(["/usr/bin/storescu", "-aec", peer.aetitle, "127.0.0.1",
                              str(peer.port), *map(str, files)],
                             capture_output=True, text=True, env=env, timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(f"storescu to {peer.name} failed: {res.stderr[-500:]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(scenario.associations) as pool:
        list(pool.map(one, chunks))
    return time.perf_counter() - start


def scenarios(data: Path, quick: bool) -> list[Scenario]:
    out = []
    frames = 20 if quick else 60
    out.append(Scenario("xa_large", f"XA 1024×1024×{frames} (16-bit) run",
                        [xa_run(data / f"xa_{frames}.dcm", frames)], target=("storescp+B", 0.7)))
    if not quick:
        out.append(Scenario("xa_2gb", "XA 1024×1024×1000 (16-bit) run, 2 GB",
                            [xa_run(data / "xa_1000.dcm", 1000)], target=("storescp+B", 0.7)))
    n = 60 if quick else 200
    out.append(Scenario("mr_small", f"{n} MR 512×512 instances, 1 association",
                        mr_instances(data / f"mr_{n}", n)))
    m = 80 if quick else 400
    out.append(Scenario("mr_parallel", f"{m} MR 512×512 instances, 8 associations",
                        mr_instances(data / f"mr_{m}", m), associations=8, target=("orthanc", 2.0)))
    out.append(Scenario("mr_parallel_2p", f"{m} MR 512×512 instances, 8 associations, "
                        "dicomnode `receive_processes = 2`",
                        mr_instances(data / f"mr_{m}", m), associations=8, target=("orthanc", 2.0),
                        node_toml="[node]\nreceive_processes = 2\n"))
    k = 30 if quick else 100
    out.append(Scenario("mr_nagle", f"{k} MR 512×512 instances, storescu as shipped (Nagle on)",
                        mr_instances(data / f"mr_{k}", k), nagle=True, target=("orthanc", 5.0)))
    return out


LOADS: list[float] = []  # 1-minute load average before each push


def run(quick: bool, repeats: int, only: set[str] | None) -> dict[str, dict[str, list[float]]]:
    work = ROOT / "bench" / "out"
    data = work / "data"
    peers = all_peers(work / "peers")
    results: dict[str, dict[str, list[float]]] = {}
    rss: dict[str, dict[str, float]] = {}
    for sc in scenarios(data, quick):
        if only and sc.name not in only:
            continue
        results[sc.name] = {p.name: [] for p in peers}
        rss[sc.name] = {}
        for r in range(repeats):
            order = peers[r % len(peers):] + peers[: r % len(peers)]
            for peer in order:
                if peer.name == "dicomnode":
                    peer.extra["toml"] = sc.node_toml
                peer.start()
                LOADS.append(os.getloadavg()[0])
                try:
                    seconds = push(peer, sc)
                    rss[sc.name][peer.name] = max(rss[sc.name].get(peer.name, 0), peer.peak_rss_mb())
                finally:
                    peer.stop()
                results[sc.name][peer.name].append(seconds)
                print(f"{sc.name:12s} repeat {r + 1} {peer.name:11s} {seconds:7.2f} s "
                      f"{sc.bytes / seconds / 1e6:8.1f} MB/s {len(sc.files) / seconds:8.1f} inst/s",
                      flush=True)
    report(scenarios(data, quick), results, rss, quick, repeats)
    return results


def report(scs: list[Scenario], results: dict[str, dict[str, list[float]]],
           rss: dict[str, dict[str, float]], quick: bool, repeats: int) -> None:
    peers = ["dicomnode", "storescp", "storescp+B", "orthanc"]
    lines = [
        f"Measured {dt.date.today()} on this machine (2 cores) by `python bench/receive.py"
        f"{' --quick' if quick else ''}`: {repeats} repeats, peers in rotated order, fresh "
        "storage per push; sender dcmtk storescu (TCP_NODELAY=1 except the Nagle row). "
        "dicomnode runs with fsync and index commit on. Ratios are medians of per-repeat ratios. "
        f"1-minute load average before the pushes: {min(LOADS, default=0):.1f}–{max(LOADS, default=0):.1f} "
        "on 2 cores shared with other agents' jobs.",
        "",
        "| scenario | " + " | ".join(f"{p} MB/s (inst/s)" for p in peers)
        + " | ×storescp | ×storescp+B | ×Orthanc | peak RSS dicomnode / storescp / +B / Orthanc (MB) "
        "| target | met |",
        "|---" * (len(peers) + 7) + "|",
    ]
    verdicts: list[str] = []
    for sc in scs:
        if sc.name not in results:
            continue
        times = results[sc.name]
        cells = [f"{sc.bytes / statistics.median(times[p]) / 1e6:.1f} "
                 f"({len(sc.files) / statistics.median(times[p]):.0f})" for p in peers]
        ratios: dict[str, float] = {}
        for other in peers[1:]:
            per_repeat = [t_other / t_node for t_node, t_other in zip(times["dicomnode"], times[other], strict=True)]
            ratios[other] = statistics.median(per_repeat)
        mem = " / ".join(f"{rss[sc.name].get(p, 0):.0f}" for p in peers)
        peer, floor = sc.target
        met = ratios[peer] >= floor
        target = f"≥ {floor:g}× {peer}"
        if sc.name == "xa_2gb":  # issue #10 item 2: memory on the 2 GB instance
            met = met and rss[sc.name].get("dicomnode", 0) <= 100
            target += ", RSS ≤ 100 MB"
        verdicts.append(f"{sc.label}: {ratios[peer]:.2f}× {peer} ({'met' if met else 'not met'})")
        lines.append(f"| {sc.label} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{ratios[p]:.2f}" for p in peers[1:])
                     + f" | {mem} | {target} | {'yes' if met else 'no'} |")
    lines += ["", "Ratios > 1 mean dicomnode is faster. Targets (issue #10): large runs ≥ 0.7× "
              "storescp +B; small instances ≥ 1.0× Orthanc (1 association), ≥ 2× Orthanc (8), "
              "≥ 5× Orthanc with Nagle on; peak RSS on the 2 GB run ≤ 100 MB. The "
              "`receive_processes = 2` row is the same 8-association push to a node configured "
              "with two receiving processes (the default is one); its storescp and Orthanc columns "
              "are those peers measured again in that scenario's own rounds.", "",
              "Against the targets: " + "; ".join(verdicts) + "."]
    text = "\n".join(lines)
    print(text)
    update_section("Receive throughput and memory", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, for CI (< 2 minutes)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", nargs="*", help="scenario names")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    run(args.quick, repeats, set(args.only) if args.only else None)


if __name__ == "__main__":
    main()
