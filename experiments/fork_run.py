#!/usr/bin/env python
"""Try another remedy without retraining the first stage.

    python experiments/fork_run.py runs/ewc+replay runs/replay --strategy replay
    python experiments/fork_run.py runs/ewc+replay runs/ewc-1e5 --strategy ewc --ewc-lambda 1e5

No remedy acts during the first experience (there is nothing to forget yet: no
EWC penalty, no replay memory, no teacher), so stage 1 is the same computation
for every strategy with the same settings and seed.  This copies SOURCE's
stage-1 checkpoint and state into a new run folder with another ``--strategy``
and continues it from stage 2 exactly as ``run.py --resume`` would; the result
equals a run of that strategy from scratch (the test suite checks it).  The
stage-1 time in the new metrics.json is the source's.

The source must be a run folder that finished stage 1 (it keeps
``resume_stage1.pt``).  EWC needs the Fisher information of stage 1, so a
strategy with ``ewc`` can only be forked from a source whose strategy had it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from avalanche_onehead.cli import fail
from avalanche_onehead.errors import OneHeadError


def first_stage_state(source: Path) -> tuple[Path, dict]:
    import torch

    from avalanche_onehead.training import FIRST_STAGE_FILE, RESUME_FILE

    for name in (FIRST_STAGE_FILE, RESUME_FILE):
        f = source / name
        if f.is_file():
            state = torch.load(f, map_location="cpu", weights_only=True)
            if int(state["progress"]["done"]) == 1:
                return f, state
    raise ValueError(f"{source}: no state saved right after stage 1 ({FIRST_STAGE_FILE}); "
                     "fork from a run folder that finished its first stage")


def fork(source: Path, dest: Path, strategy: str, remedy: dict | None = None) -> Path:
    """Write DEST: SOURCE's stage 1 with another strategy, ready for ``run.py --resume DEST``."""
    from strategies import canonical, parse_strategy

    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source}: not a run folder (no config.json)")
    if dest.exists() and any(dest.iterdir()):
        raise OneHeadError(dest, "already exists and is not empty")
    cfg = json.loads((source / "config.json").read_text())
    if cfg.get("joint"):
        raise ValueError(f"{source}: a joint-training run has no first stage to fork")
    state_file, state = first_stage_state(source)
    name = canonical(strategy)
    if "ewc" in parse_strategy(name) and not state["remedies"].get("OneHeadEWC", {}).get("importances"):
        raise ValueError(f"{source}: its strategy {cfg['strategy']!r} kept no EWC Fisher information of "
                         f"stage 1, so {name!r} cannot start from it; fork from a run with ewc")
    stage1 = source / f"stage1_{cfg['order'][0]}.pt"
    if not stage1.is_file():
        raise FileNotFoundError(f"{stage1}: missing (the source run's stage-1 checkpoint)")
    tmp = dest.with_name(f".{dest.name}.forking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.update(strategy=name, out=str(dest), remedy={**cfg.get("remedy", {}), **(remedy or {})})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy2(stage1, tmp / stage1.name)
    shutil.copy2(state_file, tmp / "resume.pt")
    shutil.copy2(state_file, tmp / "resume_stage1.pt")
    if (source / "tb").is_dir():  # stage 1's curves, so TensorBoard shows the whole run
        shutil.copytree(source / "tb", tmp / "tb")
    (tmp / "forked_from.json").write_text(json.dumps(
        {"source": str(source), "source_strategy": cfg.get("strategy"), "stage": 1}, indent=2))
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run folder that finished stage 1")
    p.add_argument("dest", help="new run folder")
    p.add_argument("--strategy", required=True, help="remedies joined by '+' for stages 2..")
    p.add_argument("--no-train", action="store_true", help="only write DEST; continue later with run.py --resume")
    p.add_argument("--no-progress", action="store_true")
    import run as run_cli  # experiments/run.py: the same remedy flags

    for action in run_cli.build_parser()._actions:
        if action.dest in run_cli.REMEDY_FLAGS:
            p.add_argument(*action.option_strings, dest=action.dest, type=action.type, choices=action.choices,
                           help=action.help)
    args = p.parse_args(argv)
    remedy = {k: getattr(args, k) for k in run_cli.REMEDY_FLAGS if getattr(args, k) is not None}
    with fail():
        dest = fork(Path(args.source), Path(args.dest), args.strategy, remedy)
        print(f"forked {args.source} (stage 1) -> {dest} with strategy {args.strategy}")
        if not args.no_train:
            return run_cli.main(["--resume", str(dest)] + (["--no-progress"] if args.no_progress else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
