"""Accuracy of each bundled model on a fresh synthetic seed, beside the paper's real-data figure.

Runs ``dicomnode evaluate MODULE --synthetic N --seed S --json`` for every module with
an empty data directory (so the bundled model under ``ai/<module>/model`` is the
active one) and writes a table of the metrics ``modules.md`` names, each with its
target and the figure the method's paper reports on its real data (from
``methods-notes.md``; "—" where the stored text has none).  Synthetic and real
figures are not the same test: the synthetic set is the generator the model was
trained on (with an unseen seed), the paper's is a clinical data set.

    python bench/accuracy.py            # full: N = 200 per module
    python bench/accuracy.py --quick    # CI: N = 24
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import operator
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_md import update_section  # noqa: E402

MODULES = ("quality", "mtici", "keyframes", "spine")
#: A seed no bundled model was trained or evaluated on by default (train: 0/1, evaluate: 20261123).
SEED = 4711

GE, LE = (operator.ge, "≥"), (operator.le, "≤")
#: (metric key, label, target comparator and value, paper's real-data figure).
Row = tuple[str, str, tuple[Callable[[float, float], bool], str], float | None, str]
ROWS: dict[str, list[Row]] = {
    "quality": [
        ("auc.contrast", "ROC-AUC contrast", GE, 0.97, "0.98"),
        ("auc.projection", "ROC-AUC projection (macro)", GE, 0.97, "0.94 (oblique 0.80)"),
        ("auc.skull", "ROC-AUC skull in field", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.motion", "ROC-AUC motion (macro)", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.shutter", "ROC-AUC shutter", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.device", "ROC-AUC device/coil", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.text", "ROC-AUC burned-in text", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.noise", "ROC-AUC noise", GE, 0.97, "0.91–0.98 (per label)"),
        ("auc.suitable", "ROC-AUC suitable for downstream AI", GE, 0.97, "0.91–0.98 (per label)"),
        ("inference_s_per_case", "inference s per run (node path)", LE, 0.3, "—"),
    ],
    "mtici": [
        ("accuracy", "4-class accuracy", GE, 0.85, "— (not in stored text)"),
        ("accuracy_within_one", "within-one-grade accuracy", GE, 0.98, "—"),
        ("binary_auc", "binary ≥2b ROC-AUC", GE, 0.95, "—"),
        ("fusion_gain", "fused − best single view (accuracy)", GE, 0.03, "—"),
        ("inference_s_per_case", "inference s per pair (node path)", LE, 2.0, "—"),
    ],
    "keyframes": [
        ("average_deviation_frames", "average deviation (frames)", LE, 2.0, "4.71"),
        ("frame_f1", "frame-level macro F", GE, 0.90, "0.8296"),
        ("map_tiou_0.3_0.7", "mAP, tIoU 0.3–0.7", GE, 0.80, "0.7245"),
        ("inference_s_per_case", "inference s per run (node path)", LE, 1.0, "—"),
    ],
    "spine": [
        ("loc_recall_6mm", "localisation recall ≤ 6 mm", GE, 0.97,
         "0.9475 disc / 0.9471 vertebra"),
        ("auc_disc", "disc ROC-AUC", GE, 0.95, "0.9088"),
        ("auc_vertebra", "vertebra ROC-AUC", GE, 0.95, "0.7916"),
        ("score", "challenge score (mean L × mean C)", GE, 0.90, "0.8050 (ResNet18-MSC)"),
        ("macro_f1_8mm", "Tianchi macro-F1 at 8 mm", GE, None, "—"),
        ("inference_s_per_case", "inference s per study (node path)", LE, 1.0, "—"),
    ],
}


def evaluate(module: str, n: int, seed: int, data_dir: Path) -> dict[str, Any]:
    """``dicomnode evaluate`` of the bundled model; its JSON, or the error."""
    cmd = [sys.executable, "-m", "dicomnode.cli.main", "evaluate", module, "--synthetic", str(n),
           "--seed", str(seed), "--json", "--data-dir", str(data_dir / module)]
    started = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:] or ["failed"],
                "wall_s": wall}
    out = json.loads(res.stdout)
    out["wall_s"] = wall
    return out


def lookup(metrics: dict[str, Any], key: str) -> float | None:
    value: Any = metrics
    for part in key.split(".") if key.startswith("auc.") else [key]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value)


def report(results: dict[str, dict[str, Any]], n: int, seed: int, quick: bool, load: str) -> str:
    lines = [
        f"Measured {dt.date.today()} by `python bench/accuracy.py{' --quick' if quick else ''}`: "
        f"`dicomnode evaluate MODULE --synthetic {n} --seed {seed} --json` of each bundled model "
        "(an empty data directory, so `ai/<module>/model` is the active version). Paper figures "
        "are the methods' own results on their real data sets (methods-notes.md), not a "
        "like-for-like comparison. Timings ran at load average "
        f"{load} on 2 cores shared with other agents' training jobs: pessimistic.",
        "",
        "| module | model version | metric | synthetic (this run) | target | met | paper, real data |",
        "|---|---|---|---|---|---|---|",
    ]
    for module in results:
        res = results[module]
        if "error" in res:
            lines.append(f"| {module} | — | evaluate failed: {' '.join(res['error'])[:200]} "
                         "| — | — | no | — |")
            continue
        metrics = res["metrics"]
        for key, label, (cmp, sign), target, paper in ROWS[module]:
            value = lookup(metrics, key)
            shown = "—" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
            met = "—" if target is None else "no" if value is None else (
                "yes" if cmp(value, target) else "no")
            goal = "—" if target is None else f"{sign} {target:g}"
            lines.append(f"| {module} | {res['model_version']} | {label} | {shown} | {goal} | "
                         f"{met} | {paper} |")
    lines += ["", "Wall time per evaluation (s): " + ", ".join(
        f"{m} {r['wall_s']:.0f}" for m, r in results.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 24 per module (CI)")
    ap.add_argument("--dry-run", action="store_true", help="print the table, leave RESULTS.md alone")
    ap.add_argument("--n", type=int, default=None, help="samples per module (default 200)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--modules", nargs="*", default=list(MODULES))
    args, _ = ap.parse_known_args()  # bench/run passes every script the same arguments
    n = args.n or (24 if args.quick else 200)
    results: dict[str, dict[str, Any]] = {}
    loads = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-accuracy-") as tmp:
        for module in args.modules:
            results[module] = evaluate(module, n, args.seed, Path(tmp))
            loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
            print(f"{module}: {json.dumps(results[module].get('metrics', results[module]))}",
                  flush=True)
    text = report(results, n, args.seed, args.quick, f"{min(loads):.1f}–{max(loads):.1f}")
    print(text)
    out = HERE / "out" / "accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    if not args.dry_run:
        update_section("Accuracy on a fresh synthetic seed", text)


if __name__ == "__main__":
    main()
