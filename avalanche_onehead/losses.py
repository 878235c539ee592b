"""The criterion for mixed batches: each sample contributes only its own task's loss.

It is a plain callable ``criterion(mb_output, mb_y)`` so Avalanche's stock plugins
(EWC, replay, SI, ...), which call ``strategy._criterion(out, y)`` directly, see
the same loss as the training loop.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .model import OneHeadOutput
from .targets import TaskBatch
from .tasks import TASKS


class OneHeadCriterion:
    """Sum over the tasks present of ``weight[task] * sum(loss components)``.

    Each task's loss is already normalised over that task's samples (mean CE,
    focal / GIoU per positive), so a replayed task weighs the same whether it
    holds one sample of the batch or all of them.
    """

    def __init__(self, task_settings: dict[str, dict[str, Any]] | None = None,
                 weights: dict[str, float] | None = None, seg_loss_stride: int = 1):
        # each task's own loss settings (``OneHeadNet.task_settings``); a task left out uses its defaults
        self.task_settings = task_settings or {}
        # dense targets subsampled by this factor before the loss: the upsampled logits at
        # full size dominate a segmentation step on cached features (measured)
        self.dense_stride = seg_loss_stride
        self.weights = {t: 1.0 for t in TASKS}
        self.weights.update(weights or {})
        self.last: dict[str, float] = {}  # components of the latest call, for logging

    def __call__(self, output: OneHeadOutput, targets: TaskBatch) -> Tensor:
        total = None
        self.last = {}
        for task, part in targets.parts.items():
            target = part.target
            shrink = TASKS[task].subsample
            if shrink is not None and self.dense_stride > 1:
                target = shrink(target, self.dense_stride)
            comps = TASKS[task].loss(output[task][part.index], target, **self.task_settings.get(task, {}))
            task_loss = sum(comps.values())
            for k, v in comps.items():
                self.last[f"{task}/{k}"] = float(v.detach())
            term = self.weights[task] * task_loss
            total = term if total is None else total + term
        if total is None:
            raise ValueError("empty batch: no task targets")
        return total
