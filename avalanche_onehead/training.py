"""The main job: train the one-head model over the Avalanche stream and write a run folder.

``experiments/run.py`` is the command-line face of :func:`run`, which is three steps:
:func:`build_run` (model, stream, remedies, the Avalanche template), :func:`run_stages`
(train, evaluate and save each stage, resuming where a stopped run left off) and
:func:`write_results` (final model, ``metrics.json``, figures, closing summary).  After every
training experience every task in the stream is evaluated on its validation split; what goes
into the run folder, and under which names, is :class:`~avalanche_onehead.run_folder.RunFolder`'s.
"""
from __future__ import annotations

import contextlib
import json
import random
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import rules
from .evaluation import (
    EPOCH_LOSS_PREFIX,
    ForgettingSummary,
    TaskMetric,
    epoch_loss_key,
    metric_key,
    summary_document,
    summary_table,
    summary_values,
)
from .losses import OneHeadCriterion
from .model import ModelConfig, OneHeadNet, count_parameters
from .feature_cache import CacheProgress, build_cache
from .plugins import EpochCheckpoint, StageEMA, StageProgress, TensorboardExtras, WarmupCosinePlugin
from .run_folder import RunFolder, empty_progress
from .stage_plans import (HeadWarmup, LogisticFit, StagePlan, apply_plan, param_groups, resolve_plans,
                          trains_tail, uses_cache)
from .settings import from_known_fields, setting
from .tasks import DEFAULT_ORDER, TASKS


DEFAULT_EPOCHS = 8  # per stage, where neither the recipe nor a flag says


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunConfig:
    """Every setting of a run, with its default and its help text: the ``run.py`` flags are made
    from these fields (``--<name>``), a recipe file (``--config``) may set any of them, and a run
    folder's ``config.json`` holds all of them."""

    strategy: str = setting("naive", help="forgetting remedies joined by '+', e.g. ewc+replay")
    data_root: str | None = setting(None, help="data folder", metavar="DIR",
                                    default_text="./data if it exists, else the embedded synthetic benchmark")
    order: list[str] = setting(help="training order of the tasks", factory=lambda: list(DEFAULT_ORDER))
    epochs: dict[str, int] = setting(help="epochs per stage: N, or TASK=N,... such as seg=4,det=6,cls=12",
                                     factory=lambda: {t: DEFAULT_EPOCHS for t in DEFAULT_ORDER}, metavar="N|TASK=N,...")
    image_size: int = setting(512, help="input size in pixels, a multiple of 32 (the backbone's largest stride)")
    backbone: str = setting("efficientnet_lite0", help="timm model name")
    pretrained: bool = setting(True, help="start from ImageNet weights",
                               flag="--no-pretrained")
    seed: int = setting(0, help="random seed of the run (each stage starts from its own seed)")
    device: str = setting(help="cpu, cuda, cuda:N or mps", factory=default_device,
                          default_text="cuda if available, else cpu")
    out: str | None = setting(None, help="run folder; must be new or empty", metavar="DIR",
                              default_text="runs/<strategy>-<timestamp>")
    batch_size: int = setting(8, help="training batch size")
    eval_batch_size: int = setting(8, help="evaluation batch size", cli=False)
    lr: float = setting(1e-3, help="AdamW learning rate")
    backbone_lr_mult: float = setting(0.3, help="the backbone's learning rate, times lr", cli=False)
    output_lr_mult: float = setting(1.0, help="the head's last (output) layer's learning rate, times lr", cli=False)
    weight_decay: float = setting(1e-4, help="AdamW weight decay (none on norms, biases, the output layer)",
                                  cli=False)
    workers: int = setting(2, help="data-loader worker processes")
    max_images: int | None = setting(None, help="use only the first N images per split (smoke runs)",
                                     metavar="N", default_text="all")
    task_weights: dict[str, float] = setting(help="weight of each task's loss (1 each)", factory=dict, cli=False)
    model: dict[str, Any] = setting(help="extra ModelConfig fields", factory=dict, cli=False)
    remedy: dict[str, Any] = setting(help="strategies.RemedyOptions fields (each has its own flag)", factory=dict,
                                     cli=False)
    plan: dict[str, dict[str, Any]] = setting(
        help="per task: which parts train, at which lr, head warm-up, cached views (stage_plans.StagePlan)",
        factory=dict, cli=False)
    cache: bool = setting(True, help="train from the frozen-feature cache when no stage moves the backbone",
                          cli=False)
    seg_loss_stride: int = setting(1, help="segmentation loss on masks subsampled by this factor (1: full size)",
                                   cli=False)
    cache_dir: str | None = setting(None, metavar="DIR", default_text="build them in memory for each run",
                                    help="keep the frozen-feature caches in this folder and reuse them in later "
                                         "runs of the same data, views and seed")
    progress: bool = setting(True, help="progress bars and per-epoch lines",
                             flag="--no-progress")
    joint: bool = setting(False, help="train all tasks together in one stage (Avalanche JointTraining): an "
                                      "upper bound, NOT allowed by the challenge")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return from_known_fields(cls, d, "run setting(s)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stage_seed(seed: int, stage: int) -> int:
    """Every stage starts from its own seed, so a resumed run replays it exactly."""
    return seed * 1000 + stage


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def default_run_dir(strategy: str) -> Path:
    return Path("runs") / f"{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(cfg: RunConfig, log=print, resume: bool = False) -> Path:
    """Train over the stream, evaluate after every experience, write the run folder.

    After every epoch the run folder gets its epoch state (what continues the stage from
    there); after every stage the stage checkpoint and the stage state (matrix so far +
    remedy state): see :class:`~avalanche_onehead.run_folder.RunFolder`.  ``resume=True``
    continues from the latest of them.  A Ctrl-C is re-raised as a ``KeyboardInterrupt``
    whose message says how to continue.
    """
    where: dict[str, Path] = {}
    try:
        return _run(cfg, log, resume, where)
    except KeyboardInterrupt:
        if "run_dir" not in where:
            raise
        raise KeyboardInterrupt(interrupted_note(where["run_dir"])) from None


def resume_command(run_dir: Path) -> str:
    """``python experiments/run.py --resume RUN_DIR``, the script's path as seen from here."""
    script = Path(__file__).resolve().parents[1] / "experiments" / "run.py"
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    return f"python {shlex.quote(str(script))} --resume {shlex.quote(str(run_dir))}"


def interrupted_note(run_dir: Path) -> str:
    """One line for a stopped run: the command that continues it, or why there is none."""
    if RunFolder(run_dir).can_resume():
        return f"continue with: {resume_command(run_dir)}"
    return f"{run_dir}: no epoch had finished, nothing to resume; start the run again"


def _run(cfg: RunConfig, log, resume: bool, where: dict[str, Path]) -> Path:
    """build -> stages -> results."""
    # deferred: benchmarks builds on the core; a module-level import here would close a package cycle
    from benchmarks import resolve_data_root

    choice = checked_strategy(cfg)  # fail fast, before anything is made
    root = resolve_data_root(cfg.data_root, cfg.seed)
    log(root.describe())
    folder = RunFolder(cfg.out or default_run_dir(choice.name))
    state = folder.load_resume_state() if resume else None
    folder.create(None if resume else asdict(cfg))  # a resumed run keeps the config.json it was started with
    where["run_dir"] = folder.path
    built = build_run(cfg, choice, root, folder, log)
    progress = run_stages(built, state, log)
    return write_results(built, progress, log)


class StrategyChoice(NamedTuple):
    name: str  # the run's name: "joint", or its remedies in registry order
    remedies: str  # the remedy spec ("naive" for none)
    options: Any  # strategies.RemedyOptions


def checked_strategy(cfg: RunConfig) -> StrategyChoice:
    """The run's remedies and their options; a wrong name, option or joint setting is an error here."""
    # deferred: strategies builds on the core; a module-level import here would close a package cycle
    from strategies import RemedyOptions, canonical

    from .errors import OneHeadError

    remedy_name = canonical(cfg.strategy)
    if cfg.joint and remedy_name != "naive":
        raise OneHeadError("--joint", f"joint training takes no forgetting remedy (got {remedy_name!r})")
    if cfg.joint and len(cfg.order) < 2:
        raise OneHeadError("--joint", "joint training needs at least two tasks")
    if cfg.joint and cfg.batch_size < len(cfg.order):
        raise OneHeadError("--batch-size", f"joint training puts every task in each batch: needs a batch of at "
                                           f"least {len(cfg.order)} (got {cfg.batch_size})")
    options = RemedyOptions.from_dict({"num_tasks": len(cfg.order), "seed": cfg.seed, **cfg.remedy})
    return StrategyChoice("joint" if cfg.joint else remedy_name, remedy_name, options)


# --- build ------------------------------------------------------------------------------------

@dataclass
class BuiltRun:
    """Everything the stages and the results of one run use, assembled by :func:`build_run`."""

    cfg: RunConfig
    name: str  # the strategy's name ("joint" for joint training)
    folder: RunFolder
    root: Any  # the resolved data root (path, synthetic or not)
    model: OneHeadNet
    stream: Any
    benchmark: Any  # the stream's Avalanche benchmark, or its frozen-feature copy
    cache_seconds: float
    plans: dict[str, StagePlan]
    train_exps: list  # the benchmark's training experiences
    stages: list[tuple[str, Any, int]]  # (name, experience(s), epochs)
    remedies: Any  # strategies.Remedies
    strategy: Any  # the Avalanche template
    summary_metric: ForgettingSummary
    loggers: list[Any]
    epoch_state: EpochCheckpoint
    stage_progress: StageProgress
    current: dict[str, Any]  # the stage being trained, for its epoch states
    meta: dict[str, Any]  # what every checkpoint records besides the weights
    provenance: dict[str, Any]
    loader_kw: dict[str, Any]
    params: int


def build_run(cfg: RunConfig, choice: StrategyChoice, root, folder: RunFolder, log) -> BuiltRun:
    """Model, stream (or its feature cache), evaluator and loggers, remedies, the Avalanche template."""
    from avalanche.training import JointTraining, Naive

    # deferred: strategies builds on the core; a module-level import here would close a package cycle
    from strategies import build_remedies

    seed_everything(cfg.seed)
    model, stream, params = build_model_and_stream(cfg, choice.name, root, log)
    remedies = build_remedies(choice.remedies, choice.options)
    remedies.check_model(model)  # before the feature cache is built
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay,
                                                cfg.output_lr_mult))
    criterion = OneHeadCriterion(model.task_settings, cfg.task_weights, seg_loss_stride=cfg.seg_loss_stride)
    plans = resolve_plans({} if cfg.joint else cfg.plan, cfg.order)
    benchmark, cache_seconds = build_benchmark(cfg, stream, model, plans, log)
    model.live_tail = benchmark is not stream.benchmark and trains_tail(plans)
    evaluator, summary_metric, loggers, tensorboard = build_evaluator(cfg, choice.name, stream, model, folder)
    train_exps = list(benchmark.train_stream)
    stages = stage_plan(cfg, train_exps)
    current = {"stage": 0, "task": "", "t0": 0.0, "seconds": 0.0}
    progress_plugins = build_progress_plugins(cfg, choice.name, stream, plans, stages, folder, current,
                                              tensorboard.writer, log)
    template = JointTraining if cfg.joint else Naive
    strategy = template(model=model, optimizer=optimizer, criterion=criterion, train_mb_size=cfg.batch_size,
                        train_epochs=1, eval_mb_size=cfg.eval_batch_size, device=torch.device(cfg.device),
                        plugins=remedies.plugins + list(progress_plugins), evaluator=evaluator, eval_every=-1)
    meta = dict(classes=stream.classes, class_keys={t: ds.class_keys for t, ds in stream.train_sets.items()},
                image_size=cfg.image_size,
                data={"root": str(root.path), "synthetic": root.synthetic, "seed": cfg.seed})
    provenance = {"command": " ".join(sys.argv), "strategy": choice.name, "seed": cfg.seed, "order": cfg.order,
                  "commit": git_commit()}
    # cached features are already in memory: worker processes would only add copies through shared memory
    loader_kw = {"num_workers": 0 if benchmark is not stream.benchmark else cfg.workers, "persistent_workers": False}
    return BuiltRun(cfg=cfg, name=choice.name, folder=folder, root=root, model=model, stream=stream,
                    benchmark=benchmark, cache_seconds=cache_seconds, plans=plans, train_exps=train_exps,
                    stages=stages, remedies=remedies, strategy=strategy, summary_metric=summary_metric,
                    loggers=loggers, epoch_state=progress_plugins.epoch_state,
                    stage_progress=progress_plugins.stage_progress, current=current,
                    meta=meta, provenance=provenance, loader_kw=loader_kw, params=params)


def build_benchmark(cfg: RunConfig, stream, model: OneHeadNet, plans: dict[str, StagePlan], log) -> tuple[Any, float]:
    """The stream's benchmark, or, when no stage moves the backbone, its frozen-feature cache
    (and the seconds building it took)."""
    if not (cfg.cache and not cfg.joint and uses_cache(plans)):
        return stream.benchmark, 0.0
    t0 = time.perf_counter()
    benchmark = cached_benchmark(stream, model, plans, cfg, log)
    return benchmark, time.perf_counter() - t0


class ProgressPlugins(NamedTuple):
    """The plugins that follow the remedies, in their working order."""

    warmup: WarmupCosinePlugin
    stage_progress: StageProgress
    epoch_state: EpochCheckpoint
    extras: TensorboardExtras


def build_progress_plugins(cfg: RunConfig, name: str, stream, plans: dict[str, StagePlan], stages, folder: RunFolder,
                           current: dict[str, Any], writer, log) -> ProgressPlugins:
    """The LR schedule, the progress line, the epoch states (``current``: the stage being trained)
    and TensorBoard's extras."""
    stage_progress = StageProgress([(task, epochs * stage_size(exp)) for task, exp, epochs in stages], log)
    warmup = WarmupCosinePlugin()
    epoch_state = EpochCheckpoint(lambda s: folder.write_epoch_state(
        {**s, "stage": current["stage"], "task": current["task"],
         "seconds": current["seconds"] + time.perf_counter() - current["t0"]}, log),
        {"warmup": warmup, "progress": stage_progress})
    extras = TensorboardExtras(writer, settings_text(cfg, name, plans), log=log,
                               preview=lambda m: preview_figure(m, stream, cfg))
    return ProgressPlugins(warmup, stage_progress, epoch_state, extras)


def build_model_and_stream(cfg: RunConfig, name: str, root, log) -> tuple[OneHeadNet, Any, int]:
    """The model (initialised from the run's seed), the task stream, and the model's parameter count."""
    # deferred: benchmarks builds on the core; a module-level import here would close a package cycle
    from benchmarks import build_stream
    from benchmarks.stream import describe_stream

    model = OneHeadNet(ModelConfig(backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model))
    stream = build_stream(root.path, cfg.order, cfg.image_size, model.mean, model.std, max_images=cfg.max_images)
    log(f"stream ({' -> '.join(cfg.order)}), image size {cfg.image_size}, strategy {name}:")
    log(describe_stream(stream))
    log("note: Avalanche calls every evaluated stream 'test_stream': in this run's log and TensorBoard tags "
        "(.../eval_phase/test_stream/...) it is each task's validation split")
    params = count_parameters(model)["total"]
    log(f"model: {cfg.backbone} ({model.weights_source or 'random init'}), {params / 1e6:.2f} M parameters")
    return model, stream, params


def build_evaluator(cfg: RunConfig, name: str, stream, model: OneHeadNet,
                    folder: RunFolder) -> tuple[Any, ForgettingSummary, list, Any]:
    """Avalanche's evaluator with every task's metric (with the model's settings for the task), the
    forgetting summary and the epoch loss, logging to ``log.txt``, TensorBoard and (with progress)
    the terminal."""
    from avalanche.evaluation.metrics import loss_metrics
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    tensorboard = TensorboardLogger(str(folder.tensorboard_dir))
    loggers = [TextLogger(open(folder.log_file, "a", buffering=1)), tensorboard]
    if cfg.progress:
        loggers.append(InteractiveLogger())
    task_metrics = [TaskMetric(t, len(stream.classes[t]), class_names=stream.classes[t], **model.task_settings[t])
                    for t in cfg.order]
    summary_metric = ForgettingSummary(task_metrics, cfg.order, name)
    summary = [] if cfg.joint else [summary_metric]  # one joint stage: nothing to forget
    evaluator = EvaluationPlugin(*task_metrics, *summary, loss_metrics(epoch=True), loggers=loggers)
    return evaluator, summary_metric, loggers, tensorboard


# --- stages -----------------------------------------------------------------------------------

def run_stages(built: BuiltRun, state: dict[str, Any] | None, log) -> dict[str, Any]:
    """Train, evaluate and save every stage not finished yet; the progress record at the end."""
    progress, mid = empty_progress(), None  # mid: the epoch state of an unfinished stage
    if state is not None:
        progress, mid = resume_progress(built, state, log)
    for i in range(progress["done"], len(built.stages)):
        train_stage(built, i, mid, progress, log)
        mid = None
        for note in built.remedies.notes():
            log(f"   {note}")
        evaluate_stage(built, i, progress, log)
        save_stage(built, i, progress)
    return progress


def resume_progress(built: BuiltRun, state: dict[str, Any], log) -> tuple[dict[str, Any], dict | None]:
    """The progress of the finished stages put back into the run (weights, remedies, clock) and
    the epoch state of the unfinished one, if any."""
    progress = restore_progress(state, built)
    mid = state.get("epoch")
    done, stages = progress["done"], built.stages
    if mid is not None:
        check_epoch_state(built, mid, stages[done][0])
    log(f"resuming {built.folder} "
        + (f"in stage {done + 1} ({stages[done][0]}) after epoch {mid['epochs_done']}/{stages[done][2]}"
           if mid else f"after stage {done} ({', '.join(s[0] for s in stages[:done])})"))
    for note in built.remedies.notes():
        log(f"   {note}")
    return progress, mid


def check_epoch_state(built: BuiltRun, mid: dict[str, Any], task: str) -> None:
    """An unfinished stage continues only under the plan its epoch state was saved with: a weight
    EMA that appeared or went since would silently restart or drop the average mid-stage."""
    from .errors import OneHeadError

    plan = built.plans.get(task, StagePlan())
    if ("ema" in mid.get("parts", {})) != bool(plan.ema_decay):
        raise OneHeadError(built.folder.path, f"the {task} stage was stopped "
                           f"{'with' if 'ema' in mid['parts'] else 'without'} a weight EMA and its plan now has "
                           f"ema_decay {plan.ema_decay:g}; resume with the plan it was saved under "
                           "(config.json's \"plan\"), or start the stage again with fork_run.py")


def train_stage(built: BuiltRun, i: int, mid: dict | None, progress: dict[str, Any], log) -> None:
    """Stage ``i``: its seed, plan and optimizer, then Avalanche's training (from ``mid``, the
    state after an epoch of it, when given)."""
    cfg, model, strategy = built.cfg, built.model, built.strategy
    task, exp, strategy.train_epochs = built.stages[i]
    seed_everything(stage_seed(cfg.seed, i))
    plan = built.plans.get(task, StagePlan())
    warmup_epochs = plan.warmup_epochs(strategy.train_epochs)
    epochs = ("no epochs" if plan.solver == "logistic"
              else f"{strategy.train_epochs} epoch{'s' if strategy.train_epochs != 1 else ''}")
    log(f"== stage {i + 1}/{len(built.stages)}: {task} ({epochs}; trains {plan.describe()}"
        + (f"; first {warmup_epochs} fit only its output channels"
           if warmup_epochs and not plan.own_output_only else "")
        + (f"; weight EMA {plan.ema_decay:g}" if plan.ema_decay else "")
        + (f"; remedies acting: {'+'.join(plan.acting(list(built.remedies.by_name))) or 'none'}"
           if plan.remedies is not None or plan.own_output_only else "") + ")")
    t0 = time.perf_counter()
    built.current.update(stage=i, task=task, t0=t0, seconds=float(mid["seconds"]) if mid else 0.0)
    built.epoch_state.pending = mid
    built.stage_progress.start_stage(i)
    apply_plan(model, plan)
    built.remedies.act_in_stage(plan.acting(list(built.remedies.by_name)))
    strategy.optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay,
                                                        cfg.output_lr_mult, plan))
    strategy.optimized_param_id = None
    # what the plan adds to this stage alone: the head warm-up, or the logistic fit of its rows
    stage_plugins = ([HeadWarmup(warmup_epochs, model.output_slices()[task])]
                     if warmup_epochs and task in model.output_slices() else [])
    if plan.solver == "logistic":
        stage_plugins.append(LogisticFit(task, plan.logistic_c, log))
    strategy.plugins.extend(stage_plugins)
    ema = StageEMA(plan.ema_decay) if plan.ema_decay else None
    if ema is not None:  # first: the stage's end must see the averaged weights
        strategy.plugins.insert(0, ema)
        built.epoch_state.parts["ema"] = ema
    # drop the last partial batch, unless that would leave no batch at all (tiny smoke runs);
    # the passes compute only the outputs the stage trains or holds
    try:
        with model.producing(stage_outputs(built.stages, i)):
            strategy.train(exp, reset_optimizer_state=True, drop_last=stage_size(exp) >= cfg.batch_size,
                           **built.loader_kw)
    finally:
        for plugin in stage_plugins:
            strategy.plugins.remove(plugin)
        if ema is not None:
            strategy.plugins.remove(ema)
            del built.epoch_state.parts["ema"]
    progress["stage_seconds"][task] = built.current["seconds"] + time.perf_counter() - t0
    loss = last_epoch_loss(strategy, task)
    if loss is not None:
        progress["last_epoch_loss"][task] = loss


def stage_outputs(stages: list[tuple[str, Any, int]], i: int) -> list[str] | None:
    """The outputs stage ``i`` reads: its own task's and those of the tasks before it (distilled,
    replayed or held); every output for the joint stage.  A later task's untrained outputs are
    not computed."""
    tasks = [task for task, _, _ in stages[: i + 1]]
    return tasks if all(t in TASKS for t in tasks) else None


def last_epoch_loss(strategy, task: str) -> float | None:
    """The stage's training loss in its last epoch, as Avalanche's evaluator last emitted it
    (None when no epoch of the stage ran in this process).  The joint stage, one experience of
    every task, is logged under a single task label: its one epoch loss is the stage's."""
    metrics = strategy.evaluator.get_last_metrics()
    if task in TASKS:
        value = metrics.get(epoch_loss_key(task))
    else:
        values = [v for k, v in metrics.items() if k.startswith(EPOCH_LOSS_PREFIX)]
        value = values[0] if len(values) == 1 else None
    return None if value is None else float(value)


def evaluate_stage(built: BuiltRun, i: int, progress: dict[str, Any], log) -> None:
    """Every task of the run on its validation split after stage ``i``: one row of the matrix."""
    order = built.cfg.order
    results = built.strategy.eval(built.benchmark.test_stream, **built.loader_kw)
    row = [float(results.get(metric_key(TASKS[t].metric_name, t, j), 0.0)) for j, t in enumerate(order)]
    progress["matrix"].append(row)
    progress["extras"].append({k: float(v) for k, v in results.items()
                               if isinstance(v, (int, float)) and "eval_phase" in k})
    progress["done"] = i + 1
    log(f"   after {built.stages[i][0]}: "
        + ", ".join(f"{t} {TASKS[t].metric_name} {v:.4f}" for t, v in zip(order, row)))


def save_stage(built: BuiltRun, i: int, progress: dict[str, Any]) -> None:
    """The stage's checkpoint, then its state (which supersedes its epoch states)."""
    cfg, task = built.cfg, built.stages[i][0]
    built.folder.save_stage_checkpoint(i + 1, task, built.model, **built.meta,
                                       provenance={**built.provenance, "stage": i + 1,
                                                   "trained": cfg.order if cfg.joint else cfg.order[: i + 1]})
    # Avalanche's iteration counters are the x axis of every logged metric: a resumed run goes on from them
    progress["clock"] = {k: int(getattr(built.strategy.clock, k)) for k in CLOCK_COUNTERS}
    built.folder.write_stage_state(progress, built.remedies.resume_state())
    built.folder.clear_epoch_state()


def restore_progress(state: dict[str, Any], built: BuiltRun) -> dict[str, Any]:
    """Weights of the last finished stage, remedy state, Avalanche's experience counter.

    Remedy state a resume file does not store (EWC's Fisher information, gpm's bases made with
    other options) is computed again at the end of each finished stage, from that stage's
    checkpoint and its plan, unless no stage still to train reads it."""
    progress = {"last_epoch_loss": {}, **state["progress"]}  # folders of before kept no epoch losses
    done = int(progress["done"])
    names = [s[0] for s in built.stages]
    model, strategy, folder, train_exps = built.model, built.strategy, built.folder, built.train_exps
    built.remedies.restore(state["remedies"], strategy, train_exps[:done])
    remedies = list(built.remedies.by_name)
    later = {n for task, _, _ in built.stages[done:] for n in built.plans.get(task, StagePlan()).acting(remedies)}
    rebuild = built.remedies.rebuilders(later, len(built.stages) - done)
    optimizer = strategy.optimizer
    try:
        for t in range(done):
            if not any(p.needs_rebuild(t) for p in rebuild):
                continue
            model.load_state_dict(folder.stage_weights(t + 1, names[t]))
            apply_plan(model, built.plans.get(names[t], StagePlan()))
            # as in the stage's own optimizer, every parameter's gradient is cleared between batches
            strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            for p in rebuild:
                p.rebuild_stage(strategy, t, train_exps[t], num_workers=built.loader_kw["num_workers"])
    finally:
        strategy.optimizer = optimizer
    if done:
        model.load_state_dict(folder.stage_weights(done, names[done - 1]))
    for k, v in progress.get("clock", {}).items():
        setattr(strategy.clock, k, int(v))
    strategy.clock.train_exp_counter = done
    built.summary_metric.matrix = [list(r) for r in progress["matrix"]]
    return progress


# --- results ----------------------------------------------------------------------------------

def write_results(built: BuiltRun, progress: dict[str, Any], log) -> Path:
    """``model.pt``, ``metrics.json`` (+ detail), the forgetting figure, the closing summary."""
    cfg, folder, stages = built.cfg, built.folder, built.stages
    folder.save_final_model(len(stages), stages[-1][0], built.model, **built.meta,
                            provenance={**built.provenance, "stage": len(stages), "trained": cfg.order})
    metrics = metrics_document(built, progress)
    folder.write_metrics(metrics, progress["extras"])
    try:
        from .figures import save_matrix_figure

        save_matrix_figure(metrics, folder.matrix_figure)
    except Exception as e:  # a figure must never lose a finished run
        log(f"warning: could not draw figures ({e})")
    for lg in built.loggers:
        if hasattr(lg, "close"):
            lg.close()
    for line in closing_summary(metrics, folder.path, built.root.path, [s[0] for s in stages]):
        log(line)
    return folder.path


def metrics_document(built: BuiltRun, progress: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: DESIGN.md's contract, and what the run measured besides."""
    cfg = built.cfg
    metrics = {
        **summary_document(progress["matrix"], cfg.order, built.name, joint=cfg.joint), "seed": cfg.seed,
        "stages": [s[0] for s in built.stages],
        "params": int(built.params),
        "train_seconds": float(sum(progress["stage_seconds"].values()) + built.cache_seconds),
        "stage_seconds": progress["stage_seconds"], "cache_seconds": float(built.cache_seconds),
        "last_epoch_loss": progress["last_epoch_loss"],
        "image_size": cfg.image_size, "epochs": cfg.epochs,
        "plan": {t: p.to_dict() for t, p in built.plans.items()},
        "data_root": str(built.root.path), "synthetic": built.root.synthetic,
    }
    metrics.update(extra_matrices(progress["extras"], cfg.order))
    if cfg.joint:
        metrics.update(joint=True, note="joint training of all tasks at once: an upper bound, "
                                        "not allowed by the challenge; no per-task baseline, so no drops")
    elif len(cfg.order) > 1:
        metrics.update(summary_values(progress["matrix"], cfg.order))
    return metrics


def closing_summary(metrics: dict[str, Any], run_dir: Path, data_root: Path, stages: list[str]) -> list[str]:
    """The lines that end a run: the matrix, the drops against the challenge's bar
    (``rules.DROP_BAR_PCT``), the time, and the ``eval.py`` command that scores this run's model."""
    secs = metrics.get("stage_seconds", {})
    parts = ", ".join(f"{t} {secs[t] / 60:.1f}" for t in stages if t in secs)
    if metrics.get("cache_seconds"):
        parts += f"; feature cache {metrics['cache_seconds'] / 60:.1f}"
    tasks = metrics["tasks"]
    which = "all" if sorted(tasks) == sorted(TASKS) else ",".join(tasks)
    model = Path(run_dir) / RunFolder.MODEL
    return [f"== summary: {metrics['strategy']}, seed {metrics.get('seed', 0)}, metric on each task's "
            f"validation split after each stage",
            *("   " + line for line in summary_table(metrics, rules.DROP_BAR_PCT)),
            f"   training time {metrics['train_seconds'] / 60:.1f} min ({parts} min)",
            f"   run folder: {run_dir}",
            f"   evaluate: python eval.py --weights {shlex.quote(str(model))} "
            f"--data_root {shlex.quote(str(data_root))} --tasks {which}"]


def settings_text(cfg: RunConfig, strategy: str, plans: dict[str, StagePlan]) -> str:
    """The run's effective settings for TensorBoard's text tab (markdown)."""
    doc = {**asdict(cfg), "strategy": strategy, "plan": {t: p.to_dict() for t, p in plans.items()}}
    return "    " + json.dumps(doc, indent=2).replace("\n", "\n    ")


def preview_figure(model: OneHeadNet, stream, cfg: RunConfig):
    """Predictions of ``model`` on a few validation images of every task of the run."""
    # deferred: benchmarks builds on the core; a module-level import here would close a package cycle
    from benchmarks import JointTransform

    from .figures import prediction_figure

    tf = JointTransform(cfg.image_size, train=False, mean=model.mean, std=model.std)
    with model.producing(None):  # drawn at the end of a stage, whose passes compute fewer outputs
        return prediction_figure(model, stream.test_sets, stream.classes, tf, per_task=4)


def cached_benchmark(stream, model: OneHeadNet, plans: dict[str, StagePlan], cfg: RunConfig, log):
    """The stream again, with every image replaced by the frozen backbone's features of it:
    ``plan.views`` views per training image (the plain resize, then seeded augmentations, the
    last ``plan.mosaic_views`` of them mosaics), one plain view per validation image (float32,
    so evaluation matches the live network)."""
    import copy

    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    # deferred: benchmarks builds on the core; a module-level import here would close a package cycle
    from benchmarks import Mosaic
    from benchmarks.stream import as_avalanche

    from .model import fold_batchnorm

    # an eval-mode BatchNorm is a fixed affine map: folded into the convs, the backbone pass runs
    # ~1.6x faster with the same features up to float rounding
    backbone = copy.deepcopy(model.backbone).eval()
    fold_batchnorm(backbone)
    train, test, total = [], [], 0
    for task in cfg.order:
        plain = copy.copy(stream.train_sets[task])
        plain.transform = stream.test_sets[task].transform
        mosaics = plans[task].mosaic_views
        views = ([plain] + [stream.train_sets[task]] * (plans[task].views - 1 - mosaics)
                 + [Mosaic(stream.train_sets[task])] * mosaics)
        n = sum(len(v) for v in views)
        key = dict(backbone=cfg.backbone, weights=model.weights_source, image_size=cfg.image_size, task=task,
                   root=str(stream.train_sets[task].split_dir), images=len(plain), seed=cfg.seed,
                   workers=cfg.workers, backbone_pass="bn-folded", targets="avalanche_onehead.tasks")
        # (a key gains the mosaics' count only when there are any: older caches keep their keys)
        tr = cached_or_built(cfg.cache_dir, {**key, "views": plans[task].views,
                                             **({"mosaic_views": mosaics} if mosaics else {})}, lambda: build_cache(
            backbone, views, seed=cfg.seed, workers=cfg.workers,
            progress=CacheProgress(f"{task} train ({plans[task].views} views)", log)), log)
        te = cached_or_built(cfg.cache_dir, {**key, "split": "val", "images": len(stream.test_sets[task])},
                             lambda: build_cache(backbone, [stream.test_sets[task]], seed=cfg.seed,
                                                 workers=cfg.workers, dtype=torch.float32,
                                                 progress=CacheProgress(f"{task} val", log)), log)
        total += tr.nbytes() + te.nbytes()
        log(f"   cached {task}: {n} training views, {len(te)} validation images")
        train.append(as_avalanche(tr, task))
        test.append(as_avalanche(te, task))
    log(f"   feature cache: {total / 2**30:.2f} GiB in memory")
    return with_task_labels(benchmark_from_datasets(train=train, test=test))


def cached_or_built(cache_dir: str | None, key: dict[str, Any], build, log):
    """``build()``, or the copy an earlier run kept in ``cache_dir`` under the same key."""
    from .feature_cache import load_views, save_views

    if not cache_dir:
        return build()
    import hashlib

    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key['task']}-{key.get('split', 'train')}-{digest}.pt"
    if path.is_file():
        log(f"   reusing feature cache {path}")
        return load_views(path)
    views = build()
    save_views(views, path)
    return views


def stage_size(exp) -> int:
    """Training items of a stage: one experience, or the joint stage's list of them."""
    return sum(len(e.dataset) for e in exp) if isinstance(exp, list) else len(exp.dataset)


def stage_plan(cfg: RunConfig, train_exps: list) -> list[tuple[str, Any, int]]:
    """(name, experience(s), epochs) per training stage.  Joint training is one stage
    over every experience, with as many epochs as the sequential stages on average.
    Avalanche's task-balanced loader oversamples every task to the largest one with a
    per-task share of each batch, so with 3 tasks an epoch runs len(task)/(batch // 3)
    steps: about a third more image-steps than the sequential run in all."""
    if cfg.joint:
        epochs = max(1, round(sum(cfg.epochs.get(t, 1) for t in cfg.order) / len(cfg.order)))
        return [("joint", train_exps, epochs)]
    return [(t, train_exps[i], cfg.epochs.get(t, 1)) for i, t in enumerate(cfg.order)]


def extra_matrices(extras: list[dict[str, float]], order: list[str]) -> dict[str, Any]:
    """Secondary metrics after every stage (``TaskSpec.secondary_metrics``, e.g. ``mAP50`` of detection)."""
    out: dict[str, Any] = {}
    for j, task in enumerate(order):
        for name in TASKS[task].secondary_metrics:
            out[f"{name}_matrix"] = [float(e.get(metric_key(name, task, j), 0.0)) for e in extras]
            out[f"final_{name}"] = out[f"{name}_matrix"][-1] if extras else 0.0
    return out


CLOCK_COUNTERS = ("train_iterations", "total_iterations")
