"""Framework overhead: the same epochs through our Avalanche strategy vs a plain PyTorch loop.

    python experiments/bench_overhead.py --data-root data --task seg --image-size 512 --repeats 3

Both sides train the same model class from the same weights on the same batches
(same sampler seed, same collate, criterion, optimizer and per-iteration LR
schedule); Avalanche's evaluation and loggers are left out so only the training
loop is compared.  A and B alternate; the median ratio is printed.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    from avalanche_onehead.tasks import DEFAULT_ORDER, TASKS

    p.add_argument("--task", default=DEFAULT_ORDER[0], choices=list(TASKS))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--max-images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from torch.utils.data import DataLoader

    from avalanche_onehead.cli import fail
    from avalanche_onehead.losses import OneHeadCriterion
    from avalanche_onehead.model import create_model
    from avalanche_onehead.plugins import WarmupCosinePlugin
    from avalanche_onehead.training import param_groups
    from benchmarks import build_stream, resolve_data_root

    with fail():
        root = resolve_data_root(args.data_root)
        base = create_model()
        stream = build_stream(root.path, [args.task], args.image_size, base.mean, base.std,
                              max_images=args.max_images)
        exp = stream.benchmark.train_stream[0]
        criterion = OneHeadCriterion(base.task_settings)

        def avalanche_epochs() -> float:
            model = copy.deepcopy(base)
            opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.3, 1e-4))
            strategy = Naive(model=model, optimizer=opt, criterion=criterion, train_mb_size=args.batch_size,
                             train_epochs=args.epochs, device="cpu", plugins=[WarmupCosinePlugin()],
                             evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            strategy.train(exp, num_workers=args.workers, drop_last=True)
            return time.perf_counter() - t0

        def plain_epochs() -> float:
            model = copy.deepcopy(base)
            opt = torch.optim.AdamW(param_groups(model, 1e-3, 0.3, 1e-4))
            sched = WarmupCosinePlugin()
            torch.manual_seed(0)
            t0 = time.perf_counter()
            loader = DataLoader(exp.dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                num_workers=args.workers, collate_fn=exp.dataset.collate_fn)
            sched.start(opt, args.epochs * len(loader))  # the plugin's schedule, without a strategy
            model.train()
            for _ in range(args.epochs):
                for x, y, _t in loader:
                    opt.zero_grad()
                    loss = criterion(model(x), y)
                    loss.backward()
                    opt.step()
                    sched.advance(opt)
            return time.perf_counter() - t0

        avalanche_epochs(), plain_epochs()  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(avalanche_epochs())
            b.append(plain_epochs())
        ratios = [x / y for x, y in zip(a, b)]
        out = {"task": args.task, "image_size": args.image_size, "images": len(exp.dataset),
               "batch_size": args.batch_size, "epochs": args.epochs, "threads": torch.get_num_threads(),
               "avalanche_s": [round(v, 2) for v in a], "plain_s": [round(v, 2) for v in b],
               "ratio_median": round(statistics.median(ratios), 3),
               "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
