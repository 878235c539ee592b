"""Data-loader throughput: images/s through the readers + train transforms.

    python experiments/bench_loader.py --data-root data --image-size 512 --workers 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2, help="passes per task; the first warms the page cache")
    args = p.parse_args(argv)
    from torch.utils.data import DataLoader

    from avalanche_onehead.cli import fail
    from avalanche_onehead.targets import collate_onehead
    from avalanche_onehead.tasks import TASKS
    from benchmarks import JointTransform, load_split, resolve_data_root

    with fail():
        root = resolve_data_root(args.data_root)
        tf = JointTransform(args.image_size, train=True, mean=(0.5,) * 3, std=(0.5,) * 3)
        out = {"data_root": str(root.path), "image_size": args.image_size, "workers": args.workers,
               "batch_size": args.batch_size, "images_per_s": {}}
        total_n, total_t = 0, 0.0
        for task in TASKS:
            ds = load_split(root.path, task, "train", tf)
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                collate_fn=collate_onehead, persistent_workers=args.workers > 0)
            best = 0.0
            for _ in range(args.epochs):
                t0 = time.perf_counter()
                n = sum(len(b[0]) for b in loader)
                dt = time.perf_counter() - t0
                best = max(best, n / dt)
            out["images_per_s"][task] = round(best, 1)
            total_n += n
            total_t += n / best
        out["images_per_s"]["all"] = round(total_n / total_t, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
