"""Small Avalanche plugins the training loop needs."""
from __future__ import annotations

import math

from avalanche.core import SupervisedPlugin


class WarmupCosinePlugin(SupervisedPlugin):
    """Per-experience linear warm-up then cosine decay, stepped every iteration.

    Avalanche's ``LRSchedulerPlugin`` replays one fixed scheduler; here the
    schedule length follows each experience's own loader (epochs x batches), so
    every stage gets a complete cosine whatever its size.
    """

    def __init__(self, warmup_iters: int = 50, min_factor: float = 0.02):
        super().__init__()
        self.warmup_iters = warmup_iters
        self.min_factor = min_factor
        self.base_lrs: list[float] | None = None
        self._optimizer = None
        self.total = 1
        self.step = 0

    def _apply(self, strategy) -> None:
        warm = min(self.warmup_iters, max(self.total // 5, 1))
        if self.step < warm:
            factor = (self.step + 1) / warm
        else:
            progress = (self.step - warm) / max(self.total - warm, 1)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group, base in zip(strategy.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def before_training_exp(self, strategy, **kwargs) -> None:
        if self.base_lrs is None or strategy.optimizer is not self._optimizer:  # a stage may bring its own
            self.base_lrs = [g.get("initial_lr", g["lr"]) for g in strategy.optimizer.param_groups]
            self._optimizer = strategy.optimizer
        self.total = max(strategy.train_epochs * len(strategy.dataloader), 1)
        self.step = 0
        self._apply(strategy)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.step += 1
        self._apply(strategy)

    def after_training_exp(self, strategy, **kwargs) -> None:
        for group, base in zip(strategy.optimizer.param_groups, self.base_lrs):
            group["lr"] = base
