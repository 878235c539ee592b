"""Evaluation: Avalanche PluginMetrics for the training loop, and a plain loop for eval.py.

Both use the task registry's evaluators, so the numbers a run logs and the
numbers ``eval.py`` prints come from the same code.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch.utils.data import DataLoader
from tqdm import tqdm

from .tasks import TASKS


def metric_key(name: str, task: str, exp_id: int) -> str:
    """Avalanche's naming: ``{metric}/eval_phase/test_stream/Task00t/Exp00j``."""
    return f"{name}/eval_phase/test_stream/Task{TASKS[task].label:03d}/Exp{exp_id:03d}"


class TaskMetric(PluginMetric[float]):
    """Dataset-level metric of one task, emitted after each evaluated experience.

    Reads ``strategy.mb_output`` and ``strategy.mb_y`` (a ``TaskBatch``) after
    every eval iteration; experiences without samples of its task emit nothing.
    Values are plain Python floats.
    """

    def __init__(self, task: str, num_classes: int | None = None, **evaluator_kwargs: Any):
        super().__init__()
        self.task = task
        self.spec = TASKS[task]
        self.evaluator = self.spec.make_evaluator(num_classes or self.spec.num_classes, **evaluator_kwargs)
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
        return [MetricValue(self, metric_key(k, self.task, exp_id), float(v), x) for k, v in self.last.items()]

    def __str__(self) -> str:
        return self.spec.metric_name


@torch.no_grad()
def evaluate_dataset(model, dataset, task: str, batch_size: int = 8, device: str = "cpu",
                     num_workers: int = 0, evaluator=None, progress: bool = True) -> dict[str, float]:
    """Run ``model`` over a reader of ``task`` and return its evaluator's ``compute()``."""
    from .targets import collate_onehead

    spec = TASKS[task]
    evaluator = evaluator or spec.make_evaluator(spec.num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_onehead)
    model.eval()
    for images, targets in tqdm(loader, desc=f"eval {task}", disable=not progress, file=sys.stderr,
                                leave=False):
        out = model(images.to(device))
        part = targets.parts[task]
        evaluator.update(out[task][part.index.to(device)], part.target.to(device))
    return evaluator.compute()
