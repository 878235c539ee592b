"""Small Avalanche plugins the training loop needs."""
from __future__ import annotations

import math
import time

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


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class StageProgress(SupervisedPlugin):
    """One line per epoch: ``stage 2/3 · det · epoch 3/10 · loss 1.234 · lr 8.1e-04 · ETA stage 2:10 · run 5:40``.

    The run's ETA counts the work left as image-steps (images x epochs of this and the later
    stages) at the rate measured so far in this run."""

    def __init__(self, work: list[tuple[str, int]], log, every_iters: int = 0):
        super().__init__()
        self.work = work  # (task, images x epochs) per stage, in order
        self.log = log
        self.every_iters = every_iters
        self.stage = 0
        self.steps_done = 0  # images trained on in this run (this process)
        self.seconds = 0.0
        self._t = 0.0
        self._loss = 0.0
        self._n = 0

    def start_stage(self, stage: int) -> None:
        self.stage = stage

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._t = time.perf_counter()
        self._loss, self._n = 0.0, 0

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._loss += float(strategy.loss.detach())
        self._n += 1
        self.steps_done += len(strategy.mb_y)

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.seconds += time.perf_counter() - self._t
        task, total = self.work[self.stage]
        epochs = strategy.train_epochs
        epoch = strategy.clock.train_exp_epochs + 1
        rate = self.seconds / max(self.steps_done, 1)
        left_stage = total * (epochs - epoch) / max(epochs, 1)
        left_run = left_stage + sum(w for _, w in self.work[self.stage + 1:])
        lr = max(g["lr"] for g in strategy.optimizer.param_groups)  # frozen groups sit at 0
        self.log(f"   stage {self.stage + 1}/{len(self.work)} · {task} · epoch {epoch}/{epochs} · "
                 f"loss {self._loss / max(self._n, 1):.3f} · lr {lr:.1e} · "
                 f"ETA stage {_clock(left_stage * rate)} · run {_clock(left_run * rate)}")
