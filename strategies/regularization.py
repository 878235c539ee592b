"""The distillation remedies' algorithms, apart from their Avalanche plugins.

Avalanche keeps Learning without Forgetting's algorithm (``avalanche.training.regularization.
LearningWithoutForgetting``) apart from the thin plugin that calls it (``LwFPlugin``); so do we.
These classes work on models and output tensors only and know nothing of a strategy's state, so
they can be checked on hand-made tensors; ``remedies.py`` wraps them as plugins.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: a per-task distillation term: (student output, teacher output, the LwF settings) -> loss
DistillationTerm = Callable[[Tensor, Tensor, "DenseLwF"], Tensor]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters take no gradient: a fixed reference."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


class Teacher:
    """A frozen copy of the model as it was before the current stage, and the tasks it has learned.

    Its outputs on one input are computed once (``key``: the training iteration), however many
    distillers ask for them."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.trained: list[str] = []  # tasks the teacher has learned, in training order
        self._key: int | None = None
        self._outputs = None

    def take(self, model: nn.Module) -> None:
        """Snapshot ``model`` (frozen, eval mode) once it has learned a task; before, there is none."""
        self.model, self._key, self._outputs = None, None, None
        if self.trained:
            self.model = frozen_copy(model)

    def learned(self, task: str) -> None:
        if task not in self.trained:
            self.trained.append(task)

    def earlier_than(self, task: str) -> list[str]:
        """The tasks the teacher knows, except ``task`` (the one being trained)."""
        return [t for t in self.trained if t != task]

    @torch.no_grad()
    def outputs(self, x: Tensor, key: int):
        if self._key != key:
            self._outputs = self.model(x)
            self._key = key
        return self._outputs


class DenseLwF:
    """Learning without Forgetting for dense outputs: the EARLIER tasks' output channel groups are
    pulled towards the teacher's, each by its own task's term (``term_of(task)``, e.g. a temperature
    KL on classification logits, a per-pixel KL on segmentation logits, soft BCE + box terms on
    detection, each given this object's ``temperature`` and ``det_threshold``); the penalty is their
    sum, each term weighted by ``task_weights`` (1 for a task not named there)."""

    def __init__(self, term_of: Callable[[str], DistillationTerm | None], temperature: float = 2.0,
                 det_threshold: float = 0.3, task_weights: Mapping[str, float] | None = None):
        self.term_of = term_of
        self.temperature = temperature
        self.det_threshold = det_threshold
        self.task_weights = dict(task_weights or {})  # distilled task -> weight of its term (1)

    def distilled(self, tasks: Sequence[str]) -> list[str]:
        """The tasks among ``tasks`` that have a term (a task without one is not distilled)."""
        return [t for t in tasks if self.term_of(t) is not None]

    def penalty(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor],
                tasks: Sequence[str]) -> Tensor:
        return sum(self.task_weights.get(t, 1.0) * self.term_of(t)(student[t], teacher[t], self) for t in tasks)


def feature_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Feature-level distillation: the mean squared distance of the student's features to the teacher's."""
    return F.mse_loss(student, teacher)
