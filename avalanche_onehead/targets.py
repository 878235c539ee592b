"""Typed per-sample targets and the one collate function every loader uses.

Avalanche moves each element of a mini-batch with ``.to(device)``; mixed replay
batches hold samples of several tasks at once.  :class:`TaskBatch` is the small
container that makes both work: it keeps, for every task present in the batch,
the positions of its samples and their targets collated the task's own way.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from .detection import rescale_boxes


@dataclass
class SegTarget:
    """Class-index mask (H, W), int64, 255 = ignore, in network-input pixels."""

    mask: Tensor
    task = "seg"

    def to(self, device: torch.device | str, **kwargs: Any) -> "SegTarget":
        return replace(self, mask=self.mask.to(device))


@dataclass
class DetTarget:
    """Boxes in network-input pixels (xyxy) plus what evaluation needs to go back.

    ``crowd_boxes`` are kept apart: ignored by the training loss, visible to the
    COCO evaluation (``iscrowd=1``).  ``orig_size`` is (height, width) of the
    image on disk and ``input_size`` the (height, width) the boxes refer to.
    """

    boxes: Tensor
    labels: Tensor
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    crowd_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    image_id: int = -1
    orig_size: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] = (0, 0)
    task = "det"

    def to(self, device: torch.device | str, **kwargs: Any) -> "DetTarget":
        return replace(
            self,
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            crowd_boxes=self.crowd_boxes.to(device),
            crowd_labels=self.crowd_labels.to(device),
        )

    def to_original(self, boxes: Tensor) -> Tensor:
        """Map xyxy boxes from network-input pixels back to original pixels."""
        return rescale_boxes(boxes, self.input_size, self.orig_size)


@dataclass
class ClsTarget:
    """Class index of a whole image."""

    label: int
    task = "cls"

    def to(self, device: torch.device | str, **kwargs: Any) -> "ClsTarget":
        return self


@dataclass
class DetTargets:
    """A list of :class:`DetTarget` that moves as one."""

    items: list[DetTarget]

    def to(self, device: torch.device | str, **kwargs: Any) -> "DetTargets":
        return DetTargets([t.to(device) for t in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DetTarget:
        return self.items[i]


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
    from .tasks import TASKS  # the registry knows how each task collates

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
