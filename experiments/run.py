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
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avalanche_onehead import rules  # noqa: E402
from avalanche_onehead import validation as check  # noqa: E402
from avalanche_onehead.cli import OneLineParser, fail  # noqa: E402
from avalanche_onehead.validation import SettingError, float_flag, int_flag, number, whole  # noqa: E402


def parse_epochs(text: str, order: list[str]) -> dict[str, int]:
    """``"8"`` -> 8 for every task; ``"seg=10,det=12,cls=3"`` -> per task (others keep 8)."""
    def count(value: str, task: str = "") -> int:
        try:
            return check.epochs(int(value))
        except ValueError:
            raise SettingError("--epochs", f"{value.strip()!r}{' for ' + task if task else ''} is not a whole "
                               "number >= 1 (give N, or task=N,... such as seg=4,det=6,cls=1)") from None

    if "=" not in text:
        return {t: count(text) for t in order}
    out = {t: 8 for t in order}
    named: set[str] = set()
    for item in text.split(","):
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep:
            raise SettingError("--epochs", f"{item.strip()!r} is not task=N (give N, or task=N,... such as "
                               "seg=4,det=6,cls=1)")
        if k not in out:
            raise SettingError("--epochs", f"names task {k!r} that is not in the run ({', '.join(order)})")
        if k in named:
            raise SettingError("--epochs", f"names task {k!r} twice")
        named.add(k)
        out[k] = count(v, k)
    return out


def build_parser() -> argparse.ArgumentParser:
    from strategies import REMEDIES

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--image-size", type=int_flag(check.image_size), default=512,
                   help=f"input size, a multiple of {check.MAX_STRIDE} (default 512; 128 on the synthetic "
                        "benchmark)")
    p.add_argument("--backbone", type=check.flag_type(check.backbone), default="efficientnet_lite0",
                   help="timm model name")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation")
    p.add_argument("--seed", type=int_flag(whole(0, check.MAX_SEED)), default=0)
    p.add_argument("--device", type=check.flag_type(check.device), default="cuda" if _cuda() else "cpu")
    p.add_argument("--out", default=None, help="run folder (default runs/<strategy>-<timestamp>); "
                                               "must be new or empty")
    p.add_argument("--overwrite", action="store_true",
                   help="clear the --out run folder first (only a folder holding a run's config.json)")
    p.add_argument("--batch-size", type=int_flag(whole(1)), default=8)
    p.add_argument("--lr", type=float_flag(number(0, above=True)), default=1e-3)
    p.add_argument("--workers", type=int_flag(whole(0)), default=2)
    p.add_argument("--max-images", type=int_flag(whole(1)), default=None,
                   help="use only the first N images per split")
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
    g.add_argument("--ewc-lambda", type=float_flag(number(0)), help="EWC penalty weight (default 1000)")
    g.add_argument("--ewc-mode", choices=["separate", "online"], help="EWC mode (default separate)")
    g.add_argument("--ewc-decay", type=float_flag(number(0, above=True, hi=1)), help="online EWC decay (default 0.9)")
    g.add_argument("--replay-mem", type=int_flag(whole(1)), dest="replay_mem_per_task",
                   help="stored images per task (default 10)")
    cap = rules.MAX_REPLAY_PER_TASK_PER_STEP
    g.add_argument("--replay-per-step", type=int_flag(whole(1, cap)),
                   help=f"replayed images per earlier task per step, <= {cap} (default 2)")
    g.add_argument("--lwf-alpha", type=float_flag(number(0)), help="LwF distillation weight (default 1)")
    g.add_argument("--lwf-temperature", type=float_flag(number(0, above=True)), help="LwF temperature (default 2)")
    g.add_argument("--lwf-task-weights", type=check.task_values_flag(check.task_map(number(0))), metavar="TASK=W,...",
                   help="weight of each distilled task's LwF term, times --lwf-alpha (default 1 each), e.g. det=10")
    g.add_argument("--kd-weight", type=float_flag(number(0)), help="feature distillation weight (default 1)")
    g.add_argument("--anchor-weight", type=float_flag(number(0)),
                   help="pretrained-feature anchor weight (default 1)")
    return p


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.json"
SMOKE_IMAGE_SIZE = 128  # the synthetic benchmark's own image size
REMEDY_FLAGS = ("ewc_lambda", "ewc_mode", "ewc_decay", "replay_mem_per_task", "replay_per_step",
                "lwf_alpha", "lwf_temperature", "kd_weight", "anchor_weight", "lwf_task_weights")


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
    from avalanche_onehead.run_folder import RunFolder
    from avalanche_onehead.training import default_run_dir, run
    from strategies import canonical

    with fail():
        if args.resume:
            cfg = resumed_config(Path(args.resume), args)
            RunFolder(cfg.out).load_resume_state(["joint"] if cfg.joint else cfg.order)
            check_data_before_run(cfg)
            run(cfg, resume=True)
        else:
            cfg = make_config(args)
            check_data_before_run(cfg)
            cfg.out = cfg.out or str(default_run_dir("joint" if cfg.joint else canonical(cfg.strategy)))
            check.check_run_folder(Path(cfg.out), overwrite=args.overwrite)
            run_in_new_folder(cfg, run, clear=args.overwrite)
    return 0


def resumed_config(run_dir: Path, args):
    """The settings a run folder was started with; only --no-progress may be added."""
    from avalanche_onehead.run_folder import RunFolder
    from avalanche_onehead.training import RunConfig

    extra = sorted(args.given - {"resume", "no_progress"})
    if extra:
        flags = ", ".join(f"--{a.replace('_', '-')}" for a in extra)
        raise SettingError("--resume", f"continues {run_dir} with the settings in its config.json; "
                           f"drop {flags} (or start a new run)")
    cfg_file = RunFolder(run_dir).config_file
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not a run folder (no {cfg_file.name})")
    doc = check.check_config_document(read_json(cfg_file), cfg_file)
    if isinstance(doc.get("epochs"), int):
        doc["epochs"] = {t: doc["epochs"] for t in doc.get("order", [])}
    cfg = RunConfig.from_dict(doc)
    cfg.out, cfg.progress = str(run_dir), not args.no_progress
    check.check_run_config(cfg, where=lambda name: f"{cfg_file}: '{name}'")
    return cfg


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise SettingError(path, f"not a readable JSON config ({str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__})") from None


def check_data_before_run(cfg) -> None:
    """The data of every stage checked (headers, masks, annotation JSON) before any folder is made;
    boxes the readers drop are said on stderr."""
    from benchmarks import resolve_data_root
    from benchmarks.check import check_data, dropped_box_notes

    root = resolve_data_root(cfg.data_root, cfg.seed)
    report = check_data(root.path, cfg.order, splits=("train", "val"), max_images=cfg.max_images)
    for note in dropped_box_notes(report):
        print(f"warning: {note}", file=sys.stderr)


def run_in_new_folder(cfg, run, clear: bool = False):
    """``run(cfg)`` into a new (or, with ``clear``, emptied) folder; a run that fails before any
    epoch finished (no resume state) leaves nothing behind."""
    from avalanche_onehead.errors import OneHeadError
    from avalanche_onehead.run_folder import RunFolder
    from benchmarks import DatasetError

    out = Path(cfg.out)
    existed = out.is_dir()
    if clear and existed:
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    try:
        return run(cfg)
    except (DatasetError, OneHeadError, ValueError, OSError):
        if out.is_dir() and not RunFolder(out).has_saved_state():  # no finished epoch or stage to resume from
            if existed:
                for entry in out.iterdir():
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def make_config(args):
    """Defaults < --config file < flags given on the command line; every value checked."""
    from avalanche_onehead.training import RunConfig
    from benchmarks import resolve_data_root

    given = args.given
    settings: dict = {}
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config or DEFAULT_CONFIG.is_file():
        settings = dict(check.check_config_document(read_json(path), path))
    replaced = {*given, *(["remedy"] if given & set(REMEDY_FLAGS) else []), *(["order"] if "tasks" in given else [])}
    from_file = set(settings) - replaced
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
    order = check.task_flag("--order", args.order if "order" in given or "order" not in settings else settings["order"])
    if args.tasks:
        chosen = check.task_flag("--tasks", args.tasks)
        order = [t for t in order if t in chosen] + [t for t in chosen if t not in order]
    settings["order"] = order
    try:
        settings["strategy"] = check.strategy(settings["strategy"])
    except ValueError as e:
        raise SettingError("--strategy" if "strategy" in given else f"{path}: 'strategy'", str(e)) from None
    synthetic = resolve_data_root(settings["data_root"], settings["seed"]).synthetic
    if synthetic and not args.config and "image_size" not in given:
        # the synthetic benchmark is a smoke test: its images are drawn at 128 px, larger only costs time
        settings["image_size"] = SMOKE_IMAGE_SIZE
    if "epochs" in given or "epochs" not in settings or (synthetic and not args.config):
        # the synthetic benchmark is a smoke test: 2 epochs unless asked otherwise
        settings["epochs"] = parse_epochs(args.epochs or ("2" if synthetic else "8"), order)
    elif isinstance(settings["epochs"], int):
        settings["epochs"] = {t: settings["epochs"] for t in order}
    else:
        settings["epochs"] = {t: int(settings["epochs"].get(t, 8)) for t in order}
    remedy = dict(settings.get("remedy", {}))
    remedy.update({k: getattr(args, k) for k in REMEDY_FLAGS if getattr(args, k) is not None})
    settings["remedy"] = remedy
    cfg = RunConfig.from_dict(settings)

    def where(name: str) -> str:  # a setting's origin: the file (unless a flag replaced it), or its flag
        if name in from_file:
            return f"{path}: '{name}'"
        return "--replay-mem/--replay-per-step" if name == "remedy" else f"--{name.replace('_', '-')}"

    check.check_run_config(cfg, where)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
