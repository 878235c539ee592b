"""Try another remedy, or a longer later stage, without retraining the stages before.

    python experiments/fork_run.py runs/ewc+replay runs/replay --strategy replay
    python experiments/fork_run.py runs/ewc+replay runs/ewc-1e5 --strategy ewc --ewc-lambda 1e5
    python experiments/fork_run.py runs/lwf runs/lwf-cls5 --after-stage 2 --epochs cls=5
    python experiments/fork_run.py runs/lp runs/lp-gpm --after-stage 2 --strategy ewc+lwf+gpm --plan cls.remedies=gpm
    python experiments/fork_run.py runs/default runs/balanced --task-setting det.balance_boxes=true

No remedy acts during the first experience (there is nothing to forget yet: no
EWC penalty, no replay memory, no teacher), so stage 1 is the same computation
for every strategy with the same settings and seed.  This copies SOURCE's
checkpoints and state up to a stage into a new run folder, with another
``--strategy``, other remedy options, other epochs or other stage plans
(``--plan``) for the stages still to come, or a later task's training settings
(``--task-setting``, e.g. detection's ``balance_boxes``), and continues it exactly as
``run.py --resume`` would: every stage starts from its own seed, so the result
equals a run of those settings from scratch (the test suite checks each kind of
fork).  After stage K > 1 the remedies that acted in stages 2..K (their stage
plans' ``remedies``) and their options must stay; a remedy that acted in none of
them may come, go or change its options, since its end-of-stage records (EWC's
Fisher, gpm's bases) are made again from the checkpoints.  The times of the
copied stages in the new metrics.json are the source's.

The source must be a run folder that finished the stage (it keeps the stage
checkpoints and ``resume_stage<K>.pt``, a few kilobytes: EWC's Fisher information is
computed again from the checkpoints; a finished run whose ``resume_stage<K>.pt`` is
gone works too, its state is then cut back from ``resume.pt``).  EWC needs the
Fisher information of stage 1, so a strategy with ``ewc`` can only be forked from a
source whose strategy had it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from avalanche_onehead.cli import fail
from avalanche_onehead.errors import OneHeadError
from avalanche_onehead.run_folder import RunFolder


def acting_in(cfg: dict, strategy: str, tasks: list[str]) -> list[set[str]]:
    """For each of ``tasks``, the remedies of ``strategy`` that act in its stage under ``cfg``'s plan."""
    from avalanche_onehead.stage_plans import StagePlan
    from strategies import parse_strategy

    names = parse_strategy(strategy)
    return [set(StagePlan.from_dict(cfg.get("plan", {}).get(t, {})).acting(names)) for t in tasks]


def changes_kept_stages(old: dict, new: dict, order: list[str], after_stage: int,
                        acting: set[str] | None = None) -> bool:
    """Whether remedy options ``new`` would have trained the first ``after_stage`` stages
    differently from ``old``.  An option of a remedy that acts in none of stages 2..K
    (``acting``: those that do; None: every remedy) changes nothing there: its end-of-stage
    records are made again from the checkpoints.  Of an acting LwF, only the weight of a task
    distilled first in a later stage (stage k distils the tasks of the stages before it) leaves
    them as they were."""
    from strategies import REMEDIES

    owner = {o: r.name for r in REMEDIES.values() for o in r.options}

    def matters(option: str) -> bool:
        return acting is None or owner.get(option) in acting or option not in owner

    distilled = set(order[:after_stage - 1])
    rest = [k for k in {**old, **new} if k != "lwf_task_weights" and matters(k)]
    if any(old.get(k) != new.get(k) for k in rest):
        return True
    if not matters("lwf_task_weights"):
        return False
    w_old, w_new = old.get("lwf_task_weights", {}), new.get("lwf_task_weights", {})
    return any(w_old.get(t, 1.0) != w_new.get(t, 1.0) for t in distilled)


def edited_plans(cfg: dict, plan: dict[str, dict] | None, order: list[str], after_stage: int) -> dict:
    """``cfg``'s plan with ``plan``'s settings merged into the stages after K (checked: a kept
    stage's plan cannot change, and each edited plan must be a valid one)."""
    from avalanche_onehead.stage_plans import StagePlan

    plans = {t: dict(p) for t, p in cfg.get("plan", {}).items()}
    for task, settings in (plan or {}).items():
        if task not in order:
            raise ValueError(f"--plan names {task!r}, not a stage of this run ({', '.join(order)})")
        if task in order[:after_stage]:
            raise ValueError(f"--plan: {task} is already trained in the first {after_stage} stage(s); "
                             f"only {', '.join(order[after_stage:])} can change")
        plans[task] = {**plans.get(task, {}), **settings}
        try:
            StagePlan.from_dict(plans[task])
        except (TypeError, ValueError) as e:
            raise ValueError(f"--plan {task}: {e}") from None
    return plans


def edited_task_settings(cfg: dict, settings: list[tuple[str, str, object]], order: list[str],
                         after_stage: int) -> dict:
    """``cfg``'s model settings with ``settings`` (task, setting, value) merged into each task's
    own (``TaskSpec.settings_field``), refused for a task already trained in the kept stages or
    a setting that also decodes (the kept stages' rows were evaluated with the source's)."""
    from avalanche_onehead.tasks import TASKS

    model = dict(cfg.get("model", {}))
    for task, key, value in settings:
        if task not in order:
            raise ValueError(f"--task-setting names {task!r}, not a stage of this run ({', '.join(order)})")
        if task in order[:after_stage]:
            raise ValueError(f"--task-setting: {task} is already trained in the first {after_stage} stage(s); "
                             f"only {', '.join(order[after_stage:])} can change")
        spec = TASKS[task]
        if key not in spec.training_settings:
            allowed = ", ".join(spec.training_settings) or "none"
            raise ValueError(f"--task-setting {task}.{key}: not a training setting of {task} "
                             f"(those a fork may change: {allowed})")
        field = spec.settings_field
        model[field] = {**model.get(field, {}), key: value}
    return model


def check_forked_config(cfg: dict) -> None:
    """The new folder's settings pass the checks ``run.py --resume`` will apply to them (ranges,
    a plan's remedies within the strategy), so a bad ``--plan`` or ``--strategy`` is refused
    before anything is written."""
    import copy

    from avalanche_onehead.commands.run import folder_config

    folder_config(copy.deepcopy(cfg), "the fork's settings")


def stage_state(source: RunFolder, stage: int) -> tuple[Path | None, dict]:
    """The state SOURCE saved right after ``stage``; for a finished run that predates
    per-stage state files, derived from its final state where that is exact."""
    saved = source.state_after(stage)
    if saved is not None:
        return saved
    if source.resume_file.is_file():
        state = source.read_state(source.resume_file)
        if int(state["progress"]["done"]) > stage:
            return None, truncated_state(source, state, stage)
    raise ValueError(f"{source}: no state saved right after stage {stage} ({source.stage_state_name(stage)}); "
                     f"fork from a run folder that finished stage {stage}")


def truncated_state(source: RunFolder, state: dict, stage: int) -> dict:
    """A later state cut back to ``stage``: the metric rows and stage times of the first
    stages, and remedy state that depends only on them.  Replay refills its memory and
    LwF takes its teacher from the finished stages, so they need nothing; EWC keeps the
    RNG state of each finished task's Fisher pass (run folders of before: one Fisher per
    task in separate mode), so the later tasks' entries are dropped.  A stored online-EWC
    estimate merges all tasks into one, which cannot be taken apart."""
    cfg = source.read_config()
    ewc = state["remedies"].get("ewc")
    if ewc and "importances" in ewc and cfg.get("remedy", {}).get("ewc_mode") == "online":
        raise ValueError(f"{source}: online EWC merged the Fisher of later stages into one estimate, and the "
                         f"run kept no state of stage {stage}; it cannot be forked there")
    p = state["progress"]
    tasks = cfg["order"][:stage]
    progress = {"done": stage, "matrix": p["matrix"][:stage], "extras": p["extras"][:stage],
                "stage_seconds": {t: v for t, v in p["stage_seconds"].items() if t in tasks},
                "last_epoch_loss": {t: v for t, v in p.get("last_epoch_loss", {}).items() if t in tasks}}
    # Avalanche's iteration counter after that stage was not kept: the TensorBoard x axis
    # of the new stages starts from 0
    remedies = {}
    if ewc:
        remedies["ewc"] = {k: {t: v for t, v in d.items() if int(t) < stage} for k, d in ewc.items()}
    return {"progress": progress, "remedies": remedies}


def fork(source: Path, dest: Path, strategy: str | None = None, remedy: dict | None = None,
         after_stage: int = 1, epochs: dict[str, int] | None = None, plan: dict[str, dict] | None = None,
         task_settings: list[tuple[str, str, object]] | None = None) -> Path:
    """Write DEST: SOURCE up to stage ``after_stage``, with another strategy, other remedy options,
    other epochs, other stage plans or other training settings of the later tasks, ready for ``run.py --resume DEST``.
    After stage K > 1, the remedies acting in stages 2..K and their options must stay."""
    from strategies import canonical, parse_strategy

    src = RunFolder(source)
    if not src.is_run_folder():
        raise FileNotFoundError(f"{source}: not a run folder (no {RunFolder.CONFIG})")
    if dest.exists() and any(dest.iterdir()):
        raise OneHeadError(dest, "already exists and is not empty")
    cfg = src.read_config()
    if cfg.get("joint"):
        raise ValueError(f"{source}: a joint-training run has one stage, nothing to fork")
    order = cfg["order"]
    if not 1 <= after_stage < len(order):
        raise ValueError(f"--after-stage must be 1..{len(order) - 1} for the {len(order)} stages of {source}")
    name = canonical(strategy or cfg["strategy"])
    new_remedy = {**cfg.get("remedy", {}), **(remedy or {})}
    plans = edited_plans(cfg, plan, order, after_stage)
    model = edited_task_settings(cfg, task_settings or [], order, after_stage)
    kept = order[1:after_stage]  # stage 1: no remedy acts (nothing to forget yet)
    before, after = acting_in(cfg, cfg["strategy"], kept), acting_in(cfg, name, kept)
    if before != after or changes_kept_stages(cfg.get("remedy", {}), new_remedy, order, after_stage,
                                              set().union(*before)):
        acted = "; ".join(f"{t}: {'+'.join(sorted(a)) or 'none'}" for t, a in zip(kept, before))
        raise ValueError(f"{source}: stages 2..{after_stage} were trained with {cfg['strategy']!r} and its "
                         f"options (remedies acting: {acted}); a fork after stage {after_stage} must keep "
                         f"those remedies and their options (fork after stage 1 instead)")
    unknown = [t for t in (epochs or {}) if t not in order]
    if unknown:
        raise ValueError(f"--epochs names {', '.join(unknown)}, not a stage of {source} ({', '.join(order)})")
    done_tasks = order[:after_stage]
    changed = [t for t in (epochs or {}) if t in done_tasks and epochs[t] != cfg["epochs"].get(t)]
    if changed:
        raise ValueError(f"--epochs: {', '.join(changed)} is already trained in the first {after_stage} "
                         f"stage(s) of {source}; only {', '.join(order[after_stage:])} can change")
    state_file, state = stage_state(src, after_stage)
    ewc = state["remedies"].get("ewc", {})
    if "ewc" in parse_strategy(name) and not (ewc.get("importances") or ewc.get("fisher_rng")):
        raise ValueError(f"{source}: its strategy {cfg['strategy']!r} kept no EWC Fisher information of "
                         f"stage 1, so {name!r} cannot start from it; fork from a run with ewc")
    checkpoints = [src.stage_checkpoint(i + 1, t) for i, t in enumerate(done_tasks)]
    for ckpt in checkpoints:
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: missing (the source run's checkpoint of that stage)")
    source_strategy = cfg["strategy"]
    cfg.update(strategy=name, out=str(dest), remedy=new_remedy, epochs={**cfg["epochs"], **(epochs or {})},
               model=model)
    if plans:
        cfg["plan"] = plans
    check_forked_config(cfg)
    tmp = RunFolder(dest.with_name(f".{dest.name}.forking"))
    shutil.rmtree(tmp.path, ignore_errors=True)
    tmp.path.mkdir(parents=True)
    tmp.write_config(cfg)
    for ckpt in checkpoints:
        shutil.copy2(ckpt, tmp.path / ckpt.name)
    for i in range(1, after_stage):  # the earlier stages' states, so the fork can be forked too
        if src.stage_state_file(i).is_file():
            shutil.copy2(src.stage_state_file(i), tmp.stage_state_file(i))
    tmp.copy_stage_state(state, after_stage)
    if src.tensorboard_dir.is_dir():  # the copied stages' curves, so TensorBoard shows the whole run
        shutil.copytree(src.tensorboard_dir, tmp.tensorboard_dir)
    tmp.write_forked_from({"source": str(source), "source_strategy": source_strategy, "stage": after_stage,
                           "state": "saved" if state_file is not None else "derived from the source's final state"})
    if dest.exists():
        dest.rmdir()
    tmp.path.rename(dest)
    return dest


LIST_SETTINGS = ("train", "remedies")  # stage-plan settings that are lists: 'gpm,lwf' reads as one


def plan_setting(text: str) -> tuple[str, str, object]:
    """``--plan``: ``"cls.views=6"`` -> ``("cls", "views", 6)``; the value is JSON, or for a list
    setting a comma list (``cls.remedies=gpm,lwf``; empty: ``[]``)."""
    import json

    target, sep, value = text.partition("=")
    task, dot, key = target.strip().partition(".")
    if not sep or not dot or not task or not key:
        raise ValueError(f"expected TASK.SETTING=VALUE, e.g. cls.views=6, not {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        if key not in LIST_SETTINGS:
            raise ValueError(f"{text!r}: {value!r} is not a JSON value") from None
        parsed = [v.strip() for v in value.split(",") if v.strip()]
    return task, key, parsed


def main(argv=None) -> int:
    from avalanche_onehead import validation as check
    from avalanche_onehead.cli import OneLineParser

    from . import run as run_cli
    from .run import REMEDY, add_remedy_flags

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run folder that finished the stage")
    p.add_argument("dest", help="new run folder")
    p.add_argument("--strategy", default=None,
                   help="remedies joined by '+' for the stages after K (default: the source's; after K > 1 "
                        "only remedies that acted in none of stages 2..K may join or leave)")
    p.add_argument("--after-stage", type=check.int_flag(check.whole(1)), default=1, metavar="K",
                   help="keep the source's first K stages (default 1)")
    # task names are checked against the source's stages by fork()
    p.add_argument("--epochs", type=check.task_values_flag(lambda v: v, lambda s: check.epochs(check.parsed(int)(s)),
                                                           "task=N"), default=None, metavar="TASK=N,...",
                   help="epochs of the stages after K, e.g. 'cls=5' (default: the source's)")
    p.add_argument("--plan", type=check.flag_type(lambda v: v, plan_setting), action="append", default=[],
                   metavar="TASK.SETTING=VALUE",
                   help="a stage-plan setting of a stage after K, a JSON value or a comma list, e.g. "
                        "'cls.views=6', 'cls.remedies=gpm', 'cls.remedies=' (none acts); repeatable")
    p.add_argument("--task-setting", type=check.flag_type(lambda v: v, plan_setting), action="append", default=[],
                   metavar="TASK.SETTING=VALUE",
                   help="a training setting of a task whose stage comes after K, a JSON value, e.g. "
                        "'det.balance_boxes=true'; repeatable")
    p.add_argument("--no-train", action="store_true", help="only write DEST; continue later with run.py --resume")
    p.add_argument("--no-progress", action="store_true")
    add_remedy_flags(p, shown="the source run's")
    args = p.parse_args(argv)
    remedy = {k.removeprefix(REMEDY): v for k, v in vars(args).items() if k.startswith(REMEDY)}
    with fail():
        plan: dict[str, dict] = {}
        for task, key, value in args.plan:
            plan.setdefault(task, {})[key] = value
        dest = fork(Path(args.source), Path(args.dest), args.strategy, remedy, args.after_stage, args.epochs, plan,
                    args.task_setting)
        cfg = RunFolder(dest).read_config()
        edits = "".join(f", plan {t} {cfg['plan'][t]}" for t in plan)
        edits += "".join(f", {t}.{k}={json.dumps(v)}" for t, k, v in args.task_setting)
        print(f"forked {args.source} (stages 1-{args.after_stage}) -> {dest}: strategy {cfg['strategy']}, "
              f"epochs {cfg['epochs']}{edits}")
        if not args.no_train:
            return run_cli.main(["--resume", str(dest)] + (["--no-progress"] if args.no_progress else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
