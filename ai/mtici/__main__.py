"""``python -m ai.mtici train``: the fast trainer that made the bundled model.

``dicomnode train mtici`` (the shared loop, ``train/loop.py``) trains the same network
with the same loss through the module's hooks.  This trainer keeps the prepared clips
as float16 tensors and skips the per-epoch validation, which is what made training
fit in the CPU time available when the bundled version was built::

    python -m ai.mtici train --synthetic 2400 --seed 1 --epochs 8 --threads 1 --out ai/mtici/model

It writes a model version in the toolkit's format (``ai.core.models``), so
``dicomnode evaluate mtici`` and the node load it like any other.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    import torch

    from ai.core.models import save_model_version
    from ai.mtici.metrics import grade_metrics
    from ai.mtici.module import MticiModule
    from ai.mtici.network import NetworkConfig
    from ai.mtici.synthetic import generate
    from ai.mtici.training import TrainConfig, fit, predict_probabilities, prepare

    torch.set_num_threads(args.threads)
    clip = tuple(args.clip)
    classes = {"4class": 4, "5class": 5, "binary": 2}[args.mode]
    network_config = NetworkConfig(num_classes=classes, clip=clip)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    t0 = time.perf_counter()
    data = prepare(generate(args.synthetic, args.seed, mode=args.mode), clip, args.mode)
    held_seed = args.seed + 1000
    held = prepare(generate(args.validation, held_seed, mode=args.mode), clip, args.mode)
    print(f"data: {args.synthetic} + {args.validation} cases in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)

    def progress(epoch: int, epochs: int, loss: float) -> None:
        print(f"epoch {epoch}/{epochs} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)

    net = fit(network_config, data, train_config, device=args.device, progress=progress)
    metrics = grade_metrics(predict_probabilities(net, held[0], held[1]), held[2].numpy(), args.mode)
    metrics["validation_seed"] = held_seed
    config = MticiModule().default_config()
    config["network"] = network_config.to_dict()
    config["preprocessing"] = {"clip": list(clip), "label_mode": args.mode}
    config["training"] = {**train_config.__dict__, "train_n": args.synthetic, "cache_rate": 1.0}
    command = " ".join(["python -m ai.mtici"] + sys.argv[1:]) if args.command_line is None else args.command_line
    save_model_version(
        Path(args.out), "mtici", net.cpu(), config, version=args.version,
        changelog={args.version: "CVFSNet on MONAI blocks, trained on synthetic dual-view DSA"},
        training_data={"source": "synthetic", "generator": "ai.mtici.synthetic", "n": args.synthetic,
                       "seed": args.seed, "wall_s": round(time.perf_counter() - t0, 1)},
        metrics=metrics, command=command,
        description="Dual-view mTICI grade (4 classes: 0/1, 2a, 2b, 3) after CVFSNet",
    )
    print({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ai.mtici``."""
    parser = argparse.ArgumentParser(prog="python -m ai.mtici")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train on synthetic data and write a model version")
    tr.add_argument("--synthetic", type=int, default=2400)
    tr.add_argument("--validation", type=int, default=300)
    tr.add_argument("--seed", type=int, default=1)
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--clip", type=int, nargs=3, default=(8, 32, 32))
    tr.add_argument("--mode", choices=("4class", "5class", "binary"), default="4class")
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--version", default="mtici-synthetic-1")
    tr.add_argument("--out", default="train_runs/mtici")
    tr.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _train(args)


if __name__ == "__main__":
    sys.exit(main())
