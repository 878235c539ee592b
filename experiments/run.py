#!/usr/bin/env python
"""Train the one-head model over the task stream and write a run folder.

    python experiments/run.py --strategy naive --data-root data
    python experiments/run.py --tasks det          # one task alone (a single-task baseline)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avalanche_onehead.cli import fail  # noqa: E402


def parse_epochs(text: str, order: list[str]) -> dict[str, int]:
    """``"8"`` -> 8 for every task; ``"seg=10,det=12,cls=3"`` -> per task (others keep 8)."""
    if "=" not in text:
        return {t: int(text) for t in order}
    out = {t: 8 for t in order}
    for item in text.split(","):
        k, v = item.split("=")
        if k.strip() not in out:
            raise ValueError(f"--epochs names task {k.strip()!r} that is not in the run ({', '.join(order)})")
        out[k.strip()] = int(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    from strategies import REMEDIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="naive",
                   help=f"remedies joined by '+' (known: {', '.join(REMEDIES)}); default naive")
    p.add_argument("--list-strategies", action="store_true", help="list the remedies and exit")
    p.add_argument("--data-root", default=None,
                   help="data folder (default: ./data if it exists, else the embedded synthetic benchmark)")
    p.add_argument("--order", default="seg,det,cls", help="training order (default seg,det,cls)")
    p.add_argument("--tasks", default=None, help="train only these tasks, in --order (e.g. det)")
    p.add_argument("--epochs", default=None,
                   help="epochs per stage: N, or seg=N,det=N,cls=N (default 8; 2 on the synthetic benchmark)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--backbone", default="efficientnet_lite0", help="timm model name")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--out", default=None, help="run folder (default runs/<strategy>-<timestamp>)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images per split")
    p.add_argument("--no-progress", action="store_true")
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from strategies import REMEDIES

    if args.list_strategies:
        for r in REMEDIES.values():
            print(f"{r.name:10s} {r.summary}")
        return 0
    from avalanche_onehead.tasks import parse_tasks
    from avalanche_onehead.training import RunConfig, run
    from benchmarks import resolve_data_root

    with fail():
        order = parse_tasks(args.order)
        if args.tasks:
            chosen = parse_tasks(args.tasks)
            order = [t for t in order if t in chosen] + [t for t in chosen if t not in order]
        synthetic = resolve_data_root(args.data_root, args.seed).synthetic
        epochs_text = args.epochs or ("2" if synthetic else "8")
        cfg = RunConfig(strategy=args.strategy, data_root=args.data_root, order=order,
                        epochs=parse_epochs(epochs_text, order), image_size=args.image_size,
                        backbone=args.backbone, pretrained=not args.no_pretrained, seed=args.seed,
                        device=args.device, out=args.out, batch_size=args.batch_size, lr=args.lr,
                        workers=args.workers, max_images=args.max_images, progress=not args.no_progress)
        run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
