"""The main job: train the one-head model over the Avalanche stream and write a run folder.

``experiments/run.py`` is the command-line face of :func:`run`.  After every
training experience every task in the stream is evaluated on its validation
split; the metric matrix, stage checkpoints, TensorBoard events and figures go
into the run folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import random
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .evaluation import ForgettingSummary, TaskMetric, metric_key, summary_document, summary_table, summary_values
from .losses import OneHeadCriterion
from .model import ModelConfig, OneHeadNet, count_parameters
from .feature_cache import CacheProgress, build_cache
from .plugins import EpochCheckpoint, StageProgress, TensorboardExtras, WarmupCosinePlugin
from .stage_plans import HeadWarmup, StagePlan, apply_plan, plan_param_groups, resolve_plans, uses_cache
from .settings import from_known_fields
from .tasks import DEFAULT_ORDER, TASKS


@dataclass
class RunConfig:
    strategy: str = "naive"
    data_root: str | None = None
    order: list[str] = field(default_factory=lambda: list(DEFAULT_ORDER))
    epochs: dict[str, int] = field(default_factory=lambda: {t: 8 for t in DEFAULT_ORDER})
    image_size: int = 512
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    batch_size: int = 8
    eval_batch_size: int = 8
    lr: float = 1e-3
    backbone_lr_mult: float = 0.3
    output_lr_mult: float = 1.0  # the head's last (output) layer
    weight_decay: float = 1e-4
    workers: int = 2
    max_images: int | None = None  # per split, for smoke runs
    task_weights: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # extra ModelConfig fields
    remedy: dict[str, Any] = field(default_factory=dict)  # strategies.RemedyOptions fields
    # per task: which parts train, at which lr, head warm-up, cached views (stage_plans.StagePlan)
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: bool = True  # train from the frozen-feature cache when no stage moves the backbone
    seg_loss_stride: int = 1  # segmentation loss on masks subsampled by this factor (1: full size)
    cache_dir: str | None = None  # keep built feature caches here and reuse them (same data, views, seed)
    progress: bool = True
    # all tasks in ONE experience (Avalanche JointTraining): an upper bound, NOT allowed by the challenge
    joint: bool = False

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


def param_groups(model: OneHeadNet, lr: float, backbone_mult: float, wd: float,
                 output_mult: float = 1.0) -> list[dict]:
    """Backbone at ``backbone_mult`` x lr, the output layer at ``output_mult`` x lr; no weight
    decay on norms, biases or the output layer (decay would shrink earlier tasks' output
    channels while they get no gradient)."""
    out_layer = {id(p) for p in model.head[-1].parameters()}
    mult = {"backbone": backbone_mult, "rest": 1.0, "output": output_mult}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else ("output" if id(p) in out_layer else "rest")
        decay = p.ndim > 1 and part != "output"
        groups.setdefault((part, decay), []).append(p)
    return [{"params": ps, "lr": lr * mult[part],
             "weight_decay": wd if decay else 0.0, "name": f"{part}{'' if decay else '-no-decay'}"}
            for (part, decay), ps in groups.items()]


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

    After every epoch the run folder gets ``resume_epoch.pt`` (what continues the stage
    from there); after every stage the stage checkpoint and ``resume.pt`` (matrix so far
    + remedy state).  ``resume=True`` continues from the latest of them.  A Ctrl-C is
    re-raised as a ``KeyboardInterrupt`` whose message says how to continue.
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
    if any((Path(run_dir) / f).is_file() for f in (RESUME_FILE, EPOCH_FILE)):
        return f"continue with: {resume_command(run_dir)}"
    return f"{run_dir}: no epoch had finished, nothing to resume; start the run again"


def _run(cfg: RunConfig, log, resume: bool, where: dict[str, Path]) -> Path:
    from avalanche.evaluation.metrics import loss_metrics
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger
    from avalanche.training import JointTraining, Naive
    from avalanche.training.plugins import EvaluationPlugin

    from benchmarks import build_stream, resolve_data_root
    from benchmarks.stream import describe_stream
    from strategies import RemedyOptions, build_plugins, canonical

    from .errors import OneHeadError

    remedy_name = canonical(cfg.strategy)  # fail fast on a bad name
    if cfg.joint and remedy_name != "naive":
        raise OneHeadError("--joint", f"joint training takes no forgetting remedy (got {remedy_name!r})")
    if cfg.joint and len(cfg.order) < 2:
        raise OneHeadError("--joint", "joint training needs at least two tasks")
    if cfg.joint and cfg.batch_size < len(cfg.order):
        raise OneHeadError("--batch-size", f"joint training puts every task in each batch: needs a batch of at "
                                           f"least {len(cfg.order)} (got {cfg.batch_size})")
    strategy_name = "joint" if cfg.joint else remedy_name
    options = RemedyOptions.from_dict({"num_tasks": len(cfg.order), "seed": cfg.seed, **cfg.remedy})
    root = resolve_data_root(cfg.data_root, cfg.seed)
    log(root.describe())
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(strategy_name)
    state = load_resume_state(run_dir) if resume else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a resumed run keeps the config.json it was started with
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    except OSError as e:
        raise OneHeadError(run_dir, f"cannot create the run folder ({e.strerror or e})") from None
    where["run_dir"] = run_dir

    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model = OneHeadNet(ModelConfig(backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model))
    stream = build_stream(root.path, cfg.order, cfg.image_size, model.mean, model.std,
                          max_images=cfg.max_images)
    log(f"stream ({' -> '.join(cfg.order)}), image size {cfg.image_size}, strategy {strategy_name}:")
    log(describe_stream(stream))
    log("note: Avalanche calls every evaluated stream 'test_stream': in this run's log and TensorBoard tags "
        "(.../eval_phase/test_stream/...) it is each task's validation split")
    params = count_parameters(model)
    log(f"model: {cfg.backbone} ({model.weights_source or 'random init'}), "
        f"{params['total'] / 1e6:.2f} M parameters")

    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay,
                                                cfg.output_lr_mult))
    criterion = OneHeadCriterion(model.task_settings, cfg.task_weights, seg_loss_stride=cfg.seg_loss_stride)
    plans = resolve_plans({} if cfg.joint else cfg.plan, cfg.order)
    benchmark, cache_seconds = stream.benchmark, 0.0
    if cfg.cache and not cfg.joint and uses_cache(plans):
        t0 = time.perf_counter()
        benchmark = cached_benchmark(stream, model, plans, cfg, log)
        cache_seconds = time.perf_counter() - t0
    tensorboard = TensorboardLogger(str(run_dir / "tb"))
    loggers = [TextLogger(open(run_dir / "log.txt", "a", buffering=1)), tensorboard]
    if cfg.progress:
        loggers.append(InteractiveLogger())
    task_metrics = [TaskMetric(t, len(stream.classes[t]), class_names=stream.classes[t], **model.task_settings[t])
                    for t in cfg.order]
    summary_metric = ForgettingSummary(task_metrics, cfg.order, strategy_name)
    summary = [] if cfg.joint else [summary_metric]  # one joint stage: nothing to forget
    evaluator = EvaluationPlugin(*task_metrics, *summary, loss_metrics(epoch=True), loggers=loggers)
    remedies = build_plugins(remedy_name, options)
    train_exps = list(benchmark.train_stream)
    stages = stage_plan(cfg, train_exps)
    stage_progress = StageProgress([(name, epochs * stage_size(exp)) for name, exp, epochs in stages], log)
    template = JointTraining if cfg.joint else Naive
    warmup = WarmupCosinePlugin()
    at = {"stage": 0, "task": "", "t0": 0.0, "seconds": 0.0}  # the stage being trained, for its epoch states
    epoch_state = EpochCheckpoint(lambda s: save_epoch_state(run_dir, {**s, "stage": at["stage"], "task": at["task"],
                                                                      "seconds": at["seconds"] + time.perf_counter()
                                                                      - at["t0"]}, log),
                                  {"warmup": warmup, "progress": stage_progress})
    extras = TensorboardExtras(tensorboard.writer, settings_text(cfg, strategy_name, plans), log=log,
                               preview=lambda m: preview_figure(m, stream, cfg))
    strategy = template(model=model, optimizer=optimizer, criterion=criterion, train_mb_size=cfg.batch_size,
                        train_epochs=1, eval_mb_size=cfg.eval_batch_size, device=device,
                        plugins=remedies + [warmup, stage_progress, epoch_state, extras], evaluator=evaluator,
                        eval_every=-1)

    meta = dict(classes=stream.classes, class_keys={t: ds.class_keys for t, ds in stream.train_sets.items()},
                image_size=cfg.image_size,
                data={"root": str(root.path), "synthetic": root.synthetic, "seed": cfg.seed})
    provenance = {"command": " ".join(sys.argv), "strategy": strategy_name, "seed": cfg.seed,
                  "order": cfg.order, "commit": git_commit()}
    # cached features are already in memory: worker processes would only add copies through shared memory
    loader_kw = {"num_workers": 0 if benchmark is not stream.benchmark else cfg.workers, "persistent_workers": False}
    progress = {"done": 0, "matrix": [], "extras": [], "stage_seconds": {}}
    mid = None  # the epoch state of an unfinished stage
    if state is not None:
        progress = restore_progress(state, run_dir, [s[0] for s in stages], model, strategy, remedies,
                                    train_exps, summary_metric, plans=plans, num_workers=loader_kw["num_workers"])
        mid = state.get("epoch")
        done = progress["done"]
        log(f"resuming {run_dir} "
            + (f"in stage {done + 1} ({stages[done][0]}) after epoch {mid['epochs_done']}/{stages[done][2]}"
               if mid else f"after stage {done} ({', '.join(s[0] for s in stages[:done])})"))
    for i in range(progress["done"], len(stages)):
        task, exp, strategy.train_epochs = stages[i]
        seed_everything(stage_seed(cfg.seed, i))
        plan = plans.get(task, StagePlan())
        log(f"== stage {i + 1}/{len(stages)}: {task} ({strategy.train_epochs} epoch"
            f"{'s' if strategy.train_epochs != 1 else ''}; trains {', '.join(plan.train)}"
            + (f"; first {plan.head_warmup_epochs} fit only its output channels" if plan.head_warmup_epochs else "")
            + ")")
        t0 = time.perf_counter()
        at.update(stage=i, task=task, t0=t0, seconds=float(mid["seconds"]) if mid else 0.0)
        epoch_state.pending, mid = mid, None
        stage_progress.start_stage(i)
        apply_plan(model, plan)
        strategy.optimizer = torch.optim.AdamW(plan_param_groups(model, plan, cfg.lr, cfg.backbone_lr_mult,
                                                                 cfg.weight_decay, cfg.output_lr_mult))
        strategy.optimized_param_id = None
        warmup = ([HeadWarmup(plan.head_warmup_epochs, model.output_slices()[task])]
                  if plan.head_warmup_epochs and task in model.output_slices() else [])
        strategy.plugins.extend(warmup)
        # drop the last partial batch, unless that would leave no batch at all (tiny smoke runs)
        size = stage_size(exp)
        try:
            strategy.train(exp, reset_optimizer_state=True, drop_last=size >= cfg.batch_size, **loader_kw)
        finally:
            for w in warmup:
                strategy.plugins.remove(w)
        progress["stage_seconds"][task] = at["seconds"] + time.perf_counter() - t0
        results = strategy.eval(benchmark.test_stream, **loader_kw)
        row = [float(results.get(metric_key(TASKS[t].metric_name, t, j), 0.0)) for j, t in enumerate(cfg.order)]
        progress["matrix"].append(row)
        progress["extras"].append({k: float(v) for k, v in results.items()
                                   if isinstance(v, (int, float)) and "eval_phase" in k})
        progress["done"] = i + 1
        log(f"   after {task}: " + ", ".join(f"{t} {TASKS[t].metric_name} {v:.4f}" for t, v in zip(cfg.order, row)))
        save_checkpoint(run_dir / f"stage{i + 1}_{task}.pt", model, **meta,
                        provenance={**provenance, "stage": i + 1,
                                    "trained": cfg.order if cfg.joint else cfg.order[: i + 1]})
        # Avalanche's iteration counters are the x axis of every logged metric: a resumed run goes on from them
        progress["clock"] = {k: int(getattr(strategy.clock, k)) for k in CLOCK_COUNTERS}
        save_resume_state(run_dir, progress, remedies)
        with contextlib.suppress(OSError):  # the finished stage's state supersedes its epoch states
            (run_dir / EPOCH_FILE).unlink(missing_ok=True)

    final_provenance = {**provenance, "stage": len(stages), "trained": cfg.order}
    last = run_dir / f"stage{len(stages)}_{stages[-1][0]}.pt"
    if not link_final_model(last, run_dir / "model.pt"):
        save_checkpoint(run_dir / "model.pt", model, **meta, provenance=final_provenance)
    metrics = {
        **summary_document(progress["matrix"], cfg.order, strategy_name, joint=cfg.joint), "seed": cfg.seed,
        "stages": [s[0] for s in stages],
        "params": int(params["total"]),
        "train_seconds": float(sum(progress["stage_seconds"].values()) + cache_seconds),
        "stage_seconds": progress["stage_seconds"], "cache_seconds": float(cache_seconds),
        "image_size": cfg.image_size, "epochs": cfg.epochs,
        "plan": {t: p.to_dict() for t, p in plans.items()},
        "data_root": str(root.path), "synthetic": root.synthetic,
    }
    metrics.update(extra_matrices(progress["extras"], cfg.order))
    if cfg.joint:
        metrics.update(joint=True, note="joint training of all tasks at once: an upper bound, "
                                        "not allowed by the challenge; no per-task baseline, so no drops")
    elif len(cfg.order) > 1:
        metrics.update(summary_values(progress["matrix"], cfg.order))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "metrics_detail.json").write_text(json.dumps(progress["extras"], indent=2))
    try:
        from .figures import save_matrix_figure

        save_matrix_figure(metrics, run_dir / "matrix.png")
    except Exception as e:  # a figure must never lose a finished run
        log(f"warning: could not draw figures ({e})")
    for lg in loggers:
        if hasattr(lg, "close"):
            lg.close()
    for line in closing_summary(metrics, run_dir, root.path, [s[0] for s in stages]):
        log(line)
    return run_dir


def link_final_model(last_stage: Path, model_pt: Path) -> bool:
    """``model.pt`` as a second name (hard link) of the last stage's checkpoint, which holds the
    same weights and provenance: the run folder keeps one copy.  False where links fail."""
    tmp = model_pt.with_name(f".{model_pt.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(last_stage, tmp)
        os.replace(tmp, model_pt)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False


def closing_summary(metrics: dict[str, Any], run_dir: Path, data_root: Path, stages: list[str]) -> list[str]:
    """The lines that end a run: the matrix, the drops against the 5 % bar, the time, and the
    ``eval.py`` command that scores this run's model."""
    secs = metrics.get("stage_seconds", {})
    parts = ", ".join(f"{t} {secs[t] / 60:.1f}" for t in stages if t in secs)
    if metrics.get("cache_seconds"):
        parts += f"; feature cache {metrics['cache_seconds'] / 60:.1f}"
    tasks = metrics["tasks"]
    which = "all" if sorted(tasks) == sorted(TASKS) else ",".join(tasks)
    return [f"== summary: {metrics['strategy']}, seed {metrics.get('seed', 0)}, metric on each task's "
            f"validation split after each stage",
            *("   " + line for line in summary_table(metrics)),
            f"   training time {metrics['train_seconds'] / 60:.1f} min ({parts} min)",
            f"   run folder: {run_dir}",
            f"   evaluate: python eval.py --weights {shlex.quote(str(Path(run_dir) / 'model.pt'))} "
            f"--data_root {shlex.quote(str(data_root))} --tasks {which}"]


def settings_text(cfg: RunConfig, strategy: str, plans: dict[str, StagePlan]) -> str:
    """The run's effective settings for TensorBoard's text tab (markdown)."""
    doc = {**asdict(cfg), "strategy": strategy, "plan": {t: p.to_dict() for t, p in plans.items()}}
    return "    " + json.dumps(doc, indent=2).replace("\n", "\n    ")


def preview_figure(model: OneHeadNet, stream, cfg: RunConfig):
    """Predictions of ``model`` on a few validation images of every task of the run."""
    from benchmarks import JointTransform

    from .figures import prediction_figure

    tf = JointTransform(cfg.image_size, train=False, mean=model.mean, std=model.std)
    return prediction_figure(model, stream.test_sets, stream.classes, tf, per_task=4)


def cached_benchmark(stream, model: OneHeadNet, plans: dict[str, StagePlan], cfg: RunConfig, log):
    """The stream again, with every image replaced by the frozen backbone's features of it:
    ``plan.views`` views per training image (the plain resize, then seeded augmentations), one
    plain view per validation image (float32, so evaluation matches the live network)."""
    import copy

    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

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
        views = [plain] + [stream.train_sets[task]] * (plans[task].views - 1)
        n = sum(len(v) for v in views)
        key = dict(backbone=cfg.backbone, weights=model.weights_source, image_size=cfg.image_size, task=task,
                   root=str(stream.train_sets[task].split_dir), images=len(plain), seed=cfg.seed,
                   workers=cfg.workers, backbone_pass="bn-folded", targets="avalanche_onehead.tasks")
        tr = cached_or_built(cfg.cache_dir, {**key, "views": plans[task].views}, lambda: build_cache(
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


RESUME_FILE = "resume.pt"
EPOCH_FILE = "resume_epoch.pt"
CLOCK_COUNTERS = ("train_iterations", "total_iterations")


def stage_state_file(stage: int) -> str:
    """The state right after ``stage`` (1-based), kept so that a fork can start there
    (experiments/fork_run.py): another remedy after stage 1, another schedule later on."""
    return f"resume_stage{stage}.pt"


def save_epoch_state(run_dir: Path, state: dict[str, Any], log=print) -> bool:
    """``resume_epoch.pt``: the unfinished stage after its latest epoch, through a temporary
    file.  A failed write is said once per stage and the run goes on (only a stop before the
    stage ends would lose its epochs)."""
    tmp = run_dir / f".{EPOCH_FILE}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, run_dir / EPOCH_FILE)
        return True
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if _warned_epoch_state.get(str(run_dir)) != state["stage"]:
            _warned_epoch_state[str(run_dir)] = state["stage"]
            reason = getattr(e, "strerror", None) or (str(e).splitlines() or [e.__class__.__name__])[0][:100]
            log(f"warning: {run_dir / EPOCH_FILE}: could not write the state after epoch {state['epochs_done']} "
                f"({reason}); a stop before this stage ends would lose its epochs")
        return False


_warned_epoch_state: dict[str, int] = {}


def save_resume_state(run_dir: Path, progress: dict[str, Any], remedies: list[Any]) -> None:
    """The state after the stage just finished: its own ``resume_stage{i}.pt`` first, then
    ``resume.pt``, each through a temporary file.  If a write fails (disk full) nothing
    half-written stays, and the files already in place still resume the run."""
    from .errors import OneHeadError

    state = {"progress": progress,
             "remedies": {type(p).__name__: p.resume_state() for p in remedies if hasattr(p, "resume_state")}}
    done = int(progress["done"])
    for name in (stage_state_file(done), RESUME_FILE):
        tmp = run_dir / f".{name}.tmp"
        try:
            torch.save(state, tmp)
            os.replace(tmp, run_dir / name)
        except (OSError, RuntimeError) as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            reason = getattr(e, "strerror", None) or (str(e).splitlines() or [e.__class__.__name__])[0][:100]
            kept = done if name == RESUME_FILE else done - 1
            if kept:
                then = f"--resume {run_dir} continues after stage {kept}"
            elif (run_dir / EPOCH_FILE).is_file():
                then = f"--resume {run_dir} repeats only the end of stage {done}"
            else:
                then = "no stage is resumable yet: start the run again"
            raise OneHeadError(run_dir / name, f"could not write the resume state after stage {done} "
                               f"({reason}); free some space, then {then}") from None


def _read_state(f: Path) -> dict[str, Any]:
    """A resume state file, loaded safely (``weights_only``) and checked for the fields resuming reads."""
    from .errors import OneHeadError

    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or hostile (a pickle that is not plain data)
        first = (str(e).splitlines() or [""])[0][:120]
        raise OneHeadError(f, f"not a readable resume state ({e.__class__.__name__}: {first})") from None
    progress = state.get("progress") if isinstance(state, dict) else None
    if not isinstance(progress, dict) or not isinstance(state.get("remedies", {}), dict):
        raise OneHeadError(f, "not a resume state (no 'progress' record)")
    done = progress.get("done")
    matrix = progress.get("matrix")
    if isinstance(done, bool) or not isinstance(done, int) or done < 1:
        raise OneHeadError(f, f"resume state names no finished stage (done = {done!r})")
    if not (isinstance(matrix, list) and len(matrix) == done and all(
            isinstance(r, list) and all(isinstance(v, (int, float)) for v in r) for r in matrix)):
        raise OneHeadError(f, f"resume state's metric matrix does not hold one row per finished stage ({done})")
    if not isinstance(progress.get("extras", []), list) or not isinstance(progress.get("stage_seconds", {}), dict):
        raise OneHeadError(f, "resume state's 'extras' or 'stage_seconds' record is damaged")
    return state


def _read_epoch_state(f: Path) -> dict[str, Any]:
    """``resume_epoch.pt``, loaded safely and checked for the fields continuing a stage reads."""
    from .errors import OneHeadError

    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:120]
        raise OneHeadError(f, f"not a readable epoch state ({e.__class__.__name__}: {first})") from None
    ok = isinstance(state, dict) and all(k in state for k in ("stage", "epochs_done", "model", "optimizer",
                                                              "parts", "clock", "rng", "seconds"))
    if not ok or not all(isinstance(state[k], int) and not isinstance(state[k], bool) and state[k] >= 0
                         for k in ("stage", "epochs_done")):
        raise OneHeadError(f, "not an epoch state (its 'stage', 'epochs_done', weights or RNG state are missing)")
    return state


def load_resume_state(run_dir: Path, stages: list[str] | None = None) -> dict[str, Any]:
    """The latest resumable state of ``run_dir``: ``resume.pt``, or a later ``resume_stage{i}.pt``
    when writing ``resume.pt`` after it failed; under ``"epoch"`` the state of the next stage
    after its latest epoch (``resume_epoch.pt``), if one was saved.  With ``stages`` (the
    run's stage names) the state must fit them and its last stage's checkpoint must be there."""
    from .errors import OneHeadError

    run_dir = Path(run_dir)
    f = run_dir / RESUME_FILE
    state = _read_state(f) if f.is_file() else None
    done = int(state["progress"]["done"]) if state else 0
    later = sorted((int(m.group(1)), p) for p in run_dir.glob("resume_stage*.pt")
                   if (m := re.fullmatch(r"resume_stage(\d+)\.pt", p.name)) and int(m.group(1)) > done)
    if later:
        f = later[-1][1]
        state = _read_state(f)
        done = int(state["progress"]["done"])
    epoch = _read_epoch_state(run_dir / EPOCH_FILE) if (run_dir / EPOCH_FILE).is_file() else None
    if epoch is not None and epoch["stage"] != done:  # left over from a stage that has finished since
        epoch = None
    if state is None and epoch is None:
        raise OneHeadError(run_dir, f"nothing to resume: no {RESUME_FILE} or {EPOCH_FILE} "
                                    "(no epoch finished yet?)")
    if state is None:
        state = {"progress": {"done": 0, "matrix": [], "extras": [], "stage_seconds": {}}, "remedies": {}}
    state["epoch"] = epoch
    if stages is not None:
        if done > len(stages):
            raise OneHeadError(f, f"resume state says {done} stages finished, the run has {len(stages)}")
        if epoch is not None and (done >= len(stages) or epoch.get("task", stages[done]) != stages[done]):
            raise OneHeadError(run_dir / EPOCH_FILE, f"its stage {epoch['stage'] + 1} is not a stage of this run")
        ckpt = run_dir / f"stage{done}_{stages[done - 1]}.pt" if done else None
        if ckpt is not None and not ckpt.is_file():
            raise OneHeadError(ckpt, f"missing: the checkpoint of stage {done}, which {f.name} resumes from")
    return state


def restore_progress(state, run_dir: Path, stage_names: list[str], model, strategy, remedies, train_exps,
                     summary_metric, plans: dict[str, StagePlan] | None = None,
                     num_workers: int = 0) -> dict[str, Any]:
    """Weights of the last finished stage, remedy state, Avalanche's experience counter.

    Remedy state a resume file does not store (EWC's Fisher information) is computed again
    at the end of each finished stage, from that stage's checkpoint and its plan."""
    from .checkpoint import read_checkpoint

    progress = state["progress"]
    done = int(progress["done"])
    for p in remedies:
        if hasattr(p, "restore"):
            p.restore(state["remedies"].get(type(p).__name__, {}), strategy, train_exps[:done])
    rebuild = [p for p in remedies if hasattr(p, "rebuild_stage")]
    optimizer = strategy.optimizer
    try:
        for t in range(done):
            if not any(p.needs_rebuild(t) for p in rebuild):
                continue
            model.load_state_dict(read_checkpoint(run_dir / f"stage{t + 1}_{stage_names[t]}.pt")["state_dict"])
            apply_plan(model, (plans or {}).get(stage_names[t], StagePlan()))
            # as in the stage's own optimizer, every parameter's gradient is cleared between batches
            strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            for p in rebuild:
                p.rebuild_stage(strategy, t, train_exps[t], num_workers=num_workers)
    finally:
        strategy.optimizer = optimizer
    if done:
        ckpt = read_checkpoint(run_dir / f"stage{done}_{stage_names[done - 1]}.pt")
        model.load_state_dict(ckpt["state_dict"])
    for k, v in progress.get("clock", {}).items():
        setattr(strategy.clock, k, int(v))
    strategy.clock.train_exp_counter = done
    summary_metric.matrix = [list(r) for r in progress["matrix"]]
    return progress
