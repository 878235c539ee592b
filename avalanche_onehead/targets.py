"""The targets of a mini-batch and the one collate function every loader uses.

Avalanche moves each element of a mini-batch with ``.to(device)``; mixed replay
batches hold samples of several tasks at once.  :class:`TaskBatch` is the small
container that makes both work: it keeps, for every task present in the batch,
the positions of its samples and their targets collated the task's own way
(each task's per-sample target type lives in its task module).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .tasks import TASKS


@dataclass
class TaskPart:
    """The samples of one task inside a mixed batch."""

    index: Tensor  # positions in the batch, int64
    target: Any  # collated the task's way (see ``tasks.TaskSpec.collate``)

    def to(self, device: torch.device | str, **kwargs: Any) -> "TaskPart":
        return TaskPart(self.index.to(device), self.target.to(device))


@dataclass
class TaskBatch:
    """Targets of a (possibly mixed) mini-batch, keyed by task name."""

    parts: dict[str, TaskPart]
    batch_size: int

    def to(self, device: torch.device | str, **kwargs: Any) -> "TaskBatch":
        return TaskBatch({k: p.to(device) for k, p in self.parts.items()}, self.batch_size)

    def __contains__(self, task: str) -> bool:
        return task in self.parts

    def __getitem__(self, task: str) -> TaskPart:
        return self.parts[task]

    def __len__(self) -> int:
        return self.batch_size


def collate_onehead(batch: Sequence[Sequence[Any]]) -> list[Any]:
    """Collate ``(image, target[, task_label])`` samples of any mix of tasks.

    Returns ``[images (B,3,H,W), TaskBatch, task_labels (B,)]`` when the samples
    carry Avalanche task labels, else ``[images, TaskBatch]``.
    """
    first = batch[0][0]
    # images, or cached backbone features (feature_cache.BackboneFeatures), which batch themselves
    images = type(first).stack([s[0] for s in batch]) if hasattr(first, "stack") else torch.stack(
        [s[0] for s in batch])
    targets = [s[1] for s in batch]
    by_task: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        by_task.setdefault(t.task, []).append(i)
    parts = {
        name: TaskPart(
            torch.tensor(idx, dtype=torch.long),
            TASKS[name].collate([targets[i] for i in idx]),
        )
        for name, idx in by_task.items()
    }
    out: list[Any] = [images, TaskBatch(parts, len(batch))]
    if len(batch[0]) > 2:
        out.append(torch.tensor([int(s[-1]) for s in batch], dtype=torch.long))
    return out
