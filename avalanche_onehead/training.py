"""The main job: train the one-head model over the Avalanche stream and write a run folder.

``experiments/run.py`` is the command-line face of :func:`run`.  After every
training experience every task in the stream is evaluated on its validation
split; the metric matrix, stage checkpoints, TensorBoard events and figures go
into the run folder.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .evaluation import TaskMetric, metric_key
from .losses import OneHeadCriterion
from .model import ModelConfig, OneHeadNet, count_parameters
from .plugins import WarmupCosinePlugin
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
    weight_decay: float = 1e-4
    workers: int = 2
    max_images: int | None = None  # per split, for smoke runs
    task_weights: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # extra ModelConfig fields
    progress: bool = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: OneHeadNet, lr: float, backbone_mult: float, wd: float) -> list[dict]:
    """Backbone at a lower rate; no weight decay on norms, biases or the output layer
    (decay would shrink earlier tasks' output channels while they get no gradient)."""
    out_layer = {id(p) for p in model.head[-1].parameters()}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "rest"
        decay = p.ndim > 1 and id(p) not in out_layer
        groups.setdefault((part, decay), []).append(p)
    return [{"params": ps, "lr": lr * (backbone_mult if part == "backbone" else 1.0),
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


def summarise(order: list[str], matrix: list[list[float]], trained: list[str]) -> dict[str, Any]:
    """Baseline = the diagonal (each task right after its own stage), final = last row."""
    baseline = {t: matrix[trained.index(t)][j] for j, t in enumerate(order)}
    final = {t: matrix[-1][j] for j, t in enumerate(order)}
    drop = {t: (100.0 * (baseline[t] - final[t]) / baseline[t] if baseline[t] > 0 else 0.0) for t in order}
    drop_abs = {t: baseline[t] - final[t] for t in order}
    return {"baseline": baseline, "final": final, "drop_pct": drop, "drop_abs": drop_abs}


def run(cfg: RunConfig, log=print) -> Path:
    """Train over the stream, evaluate after every experience, write the run folder."""
    from avalanche.evaluation.metrics import loss_metrics
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from benchmarks import build_stream, resolve_data_root
    from benchmarks.stream import describe_stream
    from strategies import build_plugins, parse_strategy

    parse_strategy(cfg.strategy)  # fail fast on a bad name
    root = resolve_data_root(cfg.data_root, cfg.seed)
    log(root.describe())
    seed_everything(cfg.seed)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.strategy)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    device = torch.device(cfg.device)
    model = OneHeadNet(ModelConfig(backbone=cfg.backbone, pretrained=cfg.pretrained, **cfg.model))
    stream = build_stream(root.path, cfg.order, cfg.image_size, model.mean, model.std,
                          max_images=cfg.max_images)
    log(f"stream ({' -> '.join(cfg.order)}), image size {cfg.image_size}, strategy {cfg.strategy}:")
    log(describe_stream(stream))
    params = count_parameters(model)
    log(f"model: {cfg.backbone} ({model.weights_source or 'random init'}), "
        f"{params['total'] / 1e6:.2f} M parameters")

    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay))
    criterion = OneHeadCriterion(model.cfg.det_cfg, cfg.task_weights)
    loggers = [TextLogger(open(run_dir / "log.txt", "a")), TensorboardLogger(str(run_dir / "tb"))]
    if cfg.progress:
        loggers.append(InteractiveLogger())
    evaluator = EvaluationPlugin(
        *[TaskMetric(t, len(stream.classes[t])) for t in cfg.order],
        loss_metrics(epoch=True),
        loggers=loggers,
    )
    plugins = build_plugins(cfg.strategy) + [WarmupCosinePlugin()]
    strategy = Naive(model=model, optimizer=optimizer, criterion=criterion, train_mb_size=cfg.batch_size,
                     train_epochs=1, eval_mb_size=cfg.eval_batch_size, device=device,
                     plugins=plugins, evaluator=evaluator, eval_every=-1)

    meta = dict(classes=stream.classes, class_keys={t: ds.class_keys for t, ds in stream.train_sets.items()}, category_ids=stream.category_ids,
                image_size=cfg.image_size,
                data={"root": str(root.path), "synthetic": root.synthetic, "seed": cfg.seed})
    provenance = {"command": " ".join(sys.argv), "strategy": cfg.strategy, "seed": cfg.seed,
                  "order": cfg.order, "commit": git_commit()}
    matrix: list[list[float]] = []
    extras: list[dict[str, float]] = []
    stage_seconds: dict[str, float] = {}
    loader_kw = {"num_workers": cfg.workers, "persistent_workers": False}
    t_all = time.perf_counter()
    for i, exp in enumerate(stream.benchmark.train_stream):
        task = cfg.order[i]
        strategy.train_epochs = cfg.epochs.get(task, 1)
        log(f"== stage {i + 1}/{len(cfg.order)}: {task} ({strategy.train_epochs} epochs)")
        t0 = time.perf_counter()
        strategy.train(exp, reset_optimizer_state=True, drop_last=True, **loader_kw)
        stage_seconds[task] = time.perf_counter() - t0
        results = strategy.eval(stream.benchmark.test_stream, **loader_kw)
        row = [float(results.get(metric_key(TASKS[t].metric_name, t, j), 0.0)) for j, t in enumerate(cfg.order)]
        matrix.append(row)
        extras.append({k: float(v) for k, v in results.items() if isinstance(v, (int, float)) and "eval_phase" in k})
        log(f"   after {task}: " + ", ".join(f"{t} {TASKS[t].metric_name} {v:.4f}" for t, v in zip(cfg.order, row)))
        save_checkpoint(run_dir / f"stage{i + 1}_{task}.pt", model, **meta,
                        provenance={**provenance, "stage": i + 1, "trained": cfg.order[: i + 1]})
    train_seconds = time.perf_counter() - t_all

    save_checkpoint(run_dir / "model.pt", model, **meta, provenance={**provenance, "stage": len(cfg.order),
                                                                    "trained": cfg.order})
    summary = summarise(cfg.order, matrix, cfg.order)
    det_j = cfg.order.index("det") if "det" in cfg.order else None
    metrics = {
        "strategy": cfg.strategy, "seed": cfg.seed, "tasks": cfg.order,
        "metric_names": {t: TASKS[t].metric_name for t in cfg.order},
        "matrix": matrix, **summary,
        "params": int(params["total"]), "train_seconds": float(train_seconds),
        "stage_seconds": stage_seconds, "image_size": cfg.image_size,
        "data_root": str(root.path), "synthetic": root.synthetic,
    }
    if det_j is not None:
        metrics["mAP50_matrix"] = [[float(e.get(metric_key("mAP50", "det", det_j), 0.0))] for e in extras]
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "metrics_detail.json").write_text(json.dumps(extras, indent=2))
    try:
        from .figures import save_matrix_figure

        save_matrix_figure(metrics, run_dir / "matrix.png")
    except Exception as e:  # a figure must never lose a finished run
        log(f"warning: could not draw figures ({e})")
    for lg in loggers:
        if hasattr(lg, "close"):
            lg.close()
    log(f"run folder: {run_dir}  (train {train_seconds / 60:.1f} min)")
    return run_dir
