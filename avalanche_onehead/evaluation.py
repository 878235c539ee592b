"""Evaluation: Avalanche PluginMetrics for the training loop, and a plain loop for eval.py.

Both use the task registry's evaluators, so the numbers a run logs and the
numbers ``eval.py`` prints come from the same code.
"""
from __future__ import annotations

import re
import sys
from typing import Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import rules
from .targets import collate_onehead
from .tasks import TASKS


def metric_key(name: str, task: str, exp_id: int) -> str:
    """Avalanche's naming: ``{metric}/eval_phase/test_stream/Task00t/Exp00j``."""
    return f"{name}/eval_phase/test_stream/Task{TASKS[task].label:03d}/Exp{exp_id:03d}"


EPOCH_LOSS_PREFIX = "Loss_Epoch/train_phase/train_stream/"


def epoch_loss_key(task: str) -> str:
    """Avalanche's name of the training loss of ``task``'s experience over one epoch (``loss_metrics(epoch=True)``)."""
    return f"{EPOCH_LOSS_PREFIX}Task{TASKS[task].label:03d}"


def tag_name(name: str) -> str:
    """A class name as one piece of a metric tag ("potted plant" -> "potted_plant")."""
    return re.sub(r"[^\w.+-]+", "_", str(name)).strip("_") or "_"


def named_classes(values: dict[str, float], class_names: list[str] | None) -> dict[str, float]:
    """Per-class entries ``IoU/3`` renamed by class, ``IoU/cat`` (``IoU/3_cat`` where two
    classes would get the same tag)."""
    if not class_names:
        return dict(values)
    tags = [tag_name(c) for c in class_names]
    unique = len(set(tags)) == len(tags)
    out = {}
    for k, v in values.items():
        head, sep, idx = k.rpartition("/")
        if sep and idx.isdigit() and int(idx) < len(tags):
            k = f"{head}/{tags[int(idx)] if unique else idx + '_' + tags[int(idx)]}"
        out[k] = v
    return out


class TaskMetric(PluginMetric[float]):
    """Dataset-level metric of one task, emitted after each evaluated experience.

    Reads ``strategy.mb_output`` and ``strategy.mb_y`` (a ``TaskBatch``) after
    every eval iteration; experiences without samples of its task emit nothing.
    Values are plain Python floats; per-class values are named by class
    (``IoU/person``) when ``class_names`` are given.  ``settings`` are the task's own
    (``OneHeadNet.task_settings[task]``, e.g. detection's decoding settings).
    """

    def __init__(self, task: str, num_classes: int | None = None, class_names: list[str] | None = None,
                 **settings: Any):
        super().__init__()
        self.task = task
        self.class_names = list(class_names) if class_names else None
        self.spec = TASKS[task]
        self.evaluator = self.spec.make_evaluator(num_classes or self.spec.num_classes, **settings)
        self.seen = 0
        self.last: dict[str, float] = {}

    def reset(self) -> None:
        self.evaluator.reset()
        self.seen = 0

    def result(self) -> float | None:
        return self.last.get(self.spec.metric_name)

    def before_eval_exp(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        part = strategy.mb_y.parts.get(self.task)
        if part is None:
            return
        raw = strategy.mb_output[self.task][part.index].detach()
        self.evaluator.update(raw, part.target)
        self.seen += len(part.index)

    def after_eval_exp(self, strategy):
        if self.seen == 0:
            return None
        self.last = self.evaluator.compute()
        exp_id = strategy.experience.current_experience
        x = strategy.clock.train_iterations
        return [MetricValue(self, metric_key(k, self.task, exp_id), float(v), x)
                for k, v in named_classes(self.last, self.class_names).items()]

    def __str__(self) -> str:
        return self.spec.metric_name


@torch.no_grad()
def evaluate_dataset(model, dataset, task: str, batch_size: int = 8, device: str = "cpu",
                     num_workers: int = 0, evaluator=None, progress: bool = True) -> dict[str, float]:
    """Run ``model`` over a reader of ``task`` and return its evaluator's ``compute()``; the
    evaluator decodes with the model's own settings for the task."""
    spec = TASKS[task]
    evaluator = evaluator or spec.make_evaluator(spec.num_classes, **model.task_settings.get(task, {}))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_onehead)
    model.eval()
    for images, targets in tqdm(loader, desc=f"eval {task}", disable=not progress, file=sys.stderr,
                                leave=False):
        out = model(images.to(device))
        part = targets.parts[task]
        evaluator.update(out[task][part.index.to(device)], part.target.to(device))
    return evaluator.compute()


class ForgettingSummary(PluginMetric[float]):
    """After each evaluation of the whole test stream: forgetting per task (absolute and
    relative to the task's baseline = its value right after its own stage), backward
    transfer (BWT), the average metric over the tasks trained so far, and the metric
    matrix as an image (TensorBoard)."""

    def __init__(self, task_metrics: list[TaskMetric], order: list[str], strategy_name: str = ""):
        super().__init__()
        self.task_metrics = task_metrics
        self.order = list(order)
        self.strategy_name = strategy_name
        self.matrix: list[list[float]] = []

    def reset(self) -> None:
        pass

    def result(self) -> float | None:
        return None

    def after_eval(self, strategy):
        trained = strategy.clock.train_exp_counter  # finished training experiences
        if trained == 0 or trained <= len(self.matrix) - 1:
            return None
        row = [float(tm.result() or 0.0) for tm in self.task_metrics]
        self.matrix = self.matrix[: trained - 1] + [row]
        values = summary_values(self.matrix, self.order)
        x = strategy.clock.train_iterations
        out = [MetricValue(self, f"{k}/eval_phase/test_stream", float(v), x) for k, v in values.items()]
        try:
            from avalanche.evaluation.metric_results import TensorImage

            from .figures import figure_to_tensor, matrix_figure

            fig = matrix_figure(summary_document(self.matrix, self.order, self.strategy_name))
            out.append(MetricValue(self, "MetricMatrix/eval_phase/test_stream",
                                   TensorImage(figure_to_tensor(fig)), x))
        except Exception:  # a figure must never stop training
            pass
        return out

    def __str__(self) -> str:
        return "ForgettingSummary"


def summary_values(matrix: list[list[float]], order: list[str]) -> dict[str, float]:
    """Forgetting / relative forgetting per trained task, BWT and average metric."""
    k = len(matrix)  # stages done; stage i trained order[i]
    last = matrix[-1]
    out: dict[str, float] = {}
    for j in range(k):
        base = matrix[j][j]
        task = order[j]
        out[f"Forgetting/{task}"] = base - last[j]
        out[f"RelForgetting/{task}"] = 100.0 * (base - last[j]) / base if base > 0 else 0.0
    if k > 1:
        out["BWT"] = sum(last[j] - matrix[j][j] for j in range(k - 1)) / (k - 1)
    out["AvgMetric"] = sum(last[:k]) / k
    return out


def summary_document(matrix: list[list[float]], order: list[str], strategy: str = "",
                     joint: bool = False) -> dict[str, Any]:
    """The metrics.json-style summary of a (possibly partial) matrix: baseline = the
    diagonal (each task right after its own stage), final = the last row.  A joint run
    has one row in which every task was trained, so its baseline is that row."""
    k = len(order) if joint else len(matrix)
    base = {t: matrix[-1 if joint else j][j] for j, t in enumerate(order[:k])}
    final = {t: matrix[-1][j] for j, t in enumerate(order[:k])}
    return {
        "strategy": strategy, "tasks": list(order),
        "metric_names": {t: TASKS[t].metric_name for t in order},
        "matrix": [list(row) for row in matrix],
        "baseline": base, "final": final,
        "drop_pct": {t: (100.0 * (base[t] - final[t]) / base[t] if base[t] > 0 else 0.0) for t in base},
        "drop_abs": {t: base[t] - final[t] for t in base},
    }


def summary_table(metrics: dict[str, Any], bar_pct: float | None = None) -> list[str]:
    """The metric matrix as text rows (one per stage), then each task's drop against the bar
    (default: the challenge's, ``rules.DROP_BAR_PCT``)."""
    bar_pct = rules.DROP_BAR_PCT if bar_pct is None else bar_pct
    tasks = metrics["tasks"]
    heads = [f"{t} {metrics['metric_names'][t]}" for t in tasks]
    width = max(12, *(len(h) + 2 for h in heads))
    stages = metrics.get("stages", tasks)
    lines = [" " * 14 + "".join(h.rjust(width) for h in heads)]
    for name, row in zip(stages, metrics["matrix"]):
        lines.append(f"after {name:<8s}" + "".join(f"{v:.4f}".rjust(width) for v in row))
    if metrics.get("joint"):
        lines.append("(joint training: no per-task baseline, so no drops)")
        return lines
    drops = metrics.get("drop_pct", {})
    cells, verdict = [], []
    for t in tasks:
        if t not in drops:
            cells.append("-")
            verdict.append("")
        elif metrics["baseline"].get(t, 0.0) <= 0:
            cells.append("n/a")
            verdict.append("baseline 0")
        else:
            cells.append(f"{drops[t]:+.1f} %")
            verdict.append("ok" if drops[t] <= bar_pct else f"> {bar_pct:g} %")
    lines.append("drop vs base  " + "".join(c.rjust(width) for c in cells))
    lines.append(f"{f'(bar {bar_pct:g} %)':<14s}" + "".join(v.rjust(width) for v in verdict))
    return lines
