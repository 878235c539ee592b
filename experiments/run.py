#!/usr/bin/env python
"""Train the one-head model over the task stream and write a run folder.

    python experiments/run.py --strategy naive --data-root data
    python experiments/run.py --tasks det          # one task alone (a single-task baseline)
    python experiments/run.py --strategy ewc+replay --ewc-lambda 5000
    python experiments/run.py --config experiments/configs/NAME.json
    python experiments/run.py --resume runs/ewc+replay-20261121-101500
"""
from __future__ import annotations

import argparse
import json
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
                   help=f"remedies joined by '+' (known: {', '.join(REMEDIES)}); default: the tuned "
                        "recipe's (naive when --config names a file without one)")
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
    p.add_argument("--cache-dir", default=None,
                   help="keep the frozen-feature caches in this folder and reuse them in later runs of the "
                        "same data, views and seed (default: build them in memory for each run)")
    p.add_argument("--config", default=None,
                   help="JSON file of run settings (RunConfig fields, remedy options under 'remedy'); "
                        "command-line flags given explicitly override it (default: the tuned recipe, "
                        "experiments/configs/default.json)")
    p.add_argument("--joint", action="store_true",
                   help="train all tasks together in one stage: an upper bound, NOT allowed by the challenge")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a killed run from its last finished stage (same settings)")
    g = p.add_argument_group("remedy options")
    g.add_argument("--ewc-lambda", type=float, help="EWC penalty weight (default 1000)")
    g.add_argument("--ewc-mode", choices=["separate", "online"], help="EWC mode (default separate)")
    g.add_argument("--ewc-decay", type=float, help="online EWC decay (default 0.9)")
    g.add_argument("--replay-mem", type=int, dest="replay_mem_per_task", help="stored images per task (default 10)")
    g.add_argument("--replay-per-step", type=int, help="replayed images per earlier task per step, <= 10 (default 2)")
    g.add_argument("--lwf-alpha", type=float, help="LwF distillation weight (default 1)")
    g.add_argument("--lwf-temperature", type=float, help="LwF temperature (default 2)")
    g.add_argument("--kd-weight", type=float, help="feature distillation weight (default 1)")
    return p


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.json"
REMEDY_FLAGS = ("ewc_lambda", "ewc_mode", "ewc_decay", "replay_mem_per_task", "replay_per_step",
                "lwf_alpha", "lwf_temperature", "kd_weight")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags, plus ``given``: the ones written on the command line (even when
    equal to their default, so ``--strategy naive`` beats a config file's strategy)."""
    args = build_parser().parse_args(argv)
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    args.given = set(vars(probe.parse_args(argv)))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from strategies import REMEDIES

    if args.list_strategies:
        for r in REMEDIES.values():
            print(f"{r.name:10s} {r.summary}")
        return 0
    from avalanche_onehead.training import RunConfig, run

    with fail():
        if args.resume:
            cfg_file = Path(args.resume) / "config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{cfg_file}: not a run folder (no config.json)")
            cfg = RunConfig.from_dict(json.loads(cfg_file.read_text()))
            cfg.out, cfg.progress = args.resume, not args.no_progress
            run(cfg, resume=True)
        else:
            run(make_config(args))
    return 0


def make_config(args):
    """Defaults < --config file < flags given on the command line."""
    from avalanche_onehead.tasks import parse_tasks
    from avalanche_onehead.training import RunConfig
    from benchmarks import resolve_data_root

    given = args.given
    settings: dict = {}
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config or DEFAULT_CONFIG.is_file():
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable JSON config ({e})") from None
    flag_to_field = {"strategy": "strategy", "data_root": "data_root", "image_size": "image_size",
                     "backbone": "backbone", "seed": "seed", "device": "device", "out": "out",
                     "batch_size": "batch_size", "lr": "lr", "workers": "workers", "max_images": "max_images",
                     "cache_dir": "cache_dir"}
    for flag, fld in flag_to_field.items():
        if flag in given or fld not in settings:
            settings[fld] = getattr(args, flag)
    if "joint" in given:
        settings["joint"] = True
        if "strategy" not in given:
            settings["strategy"] = "naive"  # the recipe's remedies do not apply to joint training
            settings.pop("remedy", None)
    if "no_pretrained" in given:
        settings["pretrained"] = False
    settings["progress"] = not args.no_progress
    order = parse_tasks(args.order if "order" in given or "order" not in settings else settings["order"])
    if args.tasks:
        chosen = parse_tasks(args.tasks)
        order = [t for t in order if t in chosen] + [t for t in chosen if t not in order]
    settings["order"] = order
    synthetic = resolve_data_root(settings["data_root"], settings["seed"]).synthetic
    if "epochs" in given or "epochs" not in settings or (synthetic and not args.config):
        # the synthetic benchmark is a smoke test: 2 epochs unless asked otherwise
        settings["epochs"] = parse_epochs(args.epochs or ("2" if synthetic else "8"), order)
    else:
        settings["epochs"] = {t: int(settings["epochs"].get(t, 8)) for t in order}
    remedy = dict(settings.get("remedy", {}))
    remedy.update({k: getattr(args, k) for k in REMEDY_FLAGS if getattr(args, k) is not None})
    settings["remedy"] = remedy
    return RunConfig.from_dict(settings)


if __name__ == "__main__":
    sys.exit(main())
