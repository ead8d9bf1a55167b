"""Where the receiver's time goes: CPU per instance, and (with py-spy) a GIL-held profile.

Starts ``dicomnode run`` (fsync on, no workers), pushes with dcmtk storescu and
reports instances/s, the node's CPU per instance (user and system, summed over its
processes) and its peak RSS.  With ``--py-spy`` (``pip install py-spy``; a
profiling tool, not a dependency of the node) it samples the threads holding the
GIL at 500 Hz and prints the functions with the most samples, inclusive.

    python bench/profile_receive.py                          # 300 MR instances, 1 association
    python bench/profile_receive.py --associations 8 --n 400 --processes 2
    python bench/profile_receive.py --xa --no-fsync          # one 126 MB XA run, fsync off
    python bench/profile_receive.py --associations 8 --n 400 --py-spy
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datagen import mr_instances, xa_run  # noqa: E402
from peers import ROOT, DicomNode  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (children of any of their threads)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            for child in (task / "children").read_text().split():
                out += tree(int(child))
        except FileNotFoundError:
            pass
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``'s process tree."""
    user = system = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


def top_frames(raw: Path, n: int = 30) -> list[tuple[int, str]]:
    """Inclusive sample counts per function from py-spy's raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = {re.sub(r" \(.*", "", f) for f in stack.split(";")[1:]}
        for frame in frames:
            counts[frame] += int(count)
    return [(c, f) for f, c in counts.most_common(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="MR instances (512×512, 0.5 MB)")
    ap.add_argument("--associations", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1, help="node.receive_processes")
    ap.add_argument("--xa", action="store_true", help="push one 1024×1024×60 XA run (126 MB) instead")
    ap.add_argument("--no-fsync", action="store_true", help="node.fsync = false (diagnosis only)")
    ap.add_argument("--nagle", action="store_true", help="storescu as shipped (Nagle on)")
    ap.add_argument("--py-spy", action="store_true", help="sample the GIL holder (needs py-spy)")
    args = ap.parse_args()

    data = ROOT / "bench" / "out" / "data"
    files = ([xa_run(data / "xa_60.dcm", 60)] if args.xa else mr_instances(data / f"mr_{args.n}", args.n))
    node = DicomNode("profile", ROOT / "bench" / "out" / "profile")
    node.extra["toml"] = (f"[node]\nreceive_processes = {args.processes}\n"
                          + ("fsync = false\n" if args.no_fsync else ""))
    node.start()  # returns once the worker-role child has started too (peers.DicomNode.wait_ready)
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if not args.nagle:
        env["TCP_NODELAY"] = "1"
    assert node.proc is not None
    spy = None
    raw = ROOT / "bench" / "out" / "profile.txt"
    try:
        if args.py_spy:
            if shutil.which("py-spy") is None:
                raise SystemExit("py-spy is not installed: pip install py-spy")
            spy = subprocess.Popen(["py-spy", "record", "-p", str(node.proc.pid), "-r", "500", "-f", "raw",
                                    "-o", str(raw), "--threads", "--nonblocking", "--gil", "--subprocesses"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        user0, sys0 = cpu_seconds(node.proc.pid)
        start = time.perf_counter()
        chunks = [files[i::args.associations] for i in range(args.associations)]
        senders = [subprocess.Popen(["/usr/bin/storescu", "-aec", node.aetitle, "127.0.0.1", str(node.port),
                                     *map(str, chunk)], env=env) for chunk in chunks if chunk]
        if any(s.wait() != 0 for s in senders):
            raise SystemExit("storescu failed")
        seconds = time.perf_counter() - start
        user1, sys1 = cpu_seconds(node.proc.pid)
        rss = node.peak_rss_mb()
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        node.stop()
    count = len(files)
    size = sum(f.stat().st_size for f in files)
    print(f"{count} instance(s), {size / 1e6:.0f} MB, {args.associations} association(s), "
          f"{args.processes} receiving process(es){', fsync off' if args.no_fsync else ''}: "
          f"{seconds:.2f} s, {count / seconds:.1f} instances/s, {size / seconds / 1e6:.0f} MB/s")
    print(f"node CPU: user {(user1 - user0) / count * 1000:.2f} + system {(sys1 - sys0) / count * 1000:.2f} "
          f"ms per instance ({(user1 - user0 + sys1 - sys0) / seconds:.2f} cores busy); peak RSS {rss:.0f} MB")
    if spy is not None and raw.exists():
        frames = top_frames(raw)
        total = max((c for c, _ in frames), default=1)
        print(f"GIL-held samples, inclusive (of {total} with a Python stack):")
        for c, f in frames:
            print(f"{c:6d} {100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
