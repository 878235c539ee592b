"""Small Avalanche plugins the training loop needs."""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

import numpy as np
import torch
from avalanche.core import SupervisedPlugin


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from (Python, NumPy, torch, CUDA), as plain
    tensors and tuples, so that ``torch.load(..., weights_only=True)`` reads it back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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

    def start(self, optimizer, total: int) -> None:
        """Begin a schedule of ``total`` iterations on ``optimizer`` outside Avalanche (a plain
        loop then calls :meth:`advance` after every step)."""
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self._optimizer = optimizer
        self.total, self.step = max(total, 1), 0
        self.apply(optimizer)

    def advance(self, optimizer) -> None:
        """One iteration further: the learning rates of the next step."""
        self.step += 1
        self.apply(optimizer)

    def apply(self, optimizer) -> None:
        """Set every group's learning rate for the current step."""
        warm = min(self.warmup_iters, max(self.total // 5, 1))
        if self.step < warm:
            factor = (self.step + 1) / warm
        else:
            progress = (self.step - warm) / max(self.total - warm, 1)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def before_training_exp(self, strategy, **kwargs) -> None:
        if self.base_lrs is None or strategy.optimizer is not self._optimizer:  # a stage may bring its own
            self.base_lrs = [g.get("initial_lr", g["lr"]) for g in strategy.optimizer.param_groups]
            self._optimizer = strategy.optimizer
        self.total = max(strategy.train_epochs * len(strategy.dataloader), 1)
        self.step = 0
        self.apply(strategy.optimizer)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.advance(strategy.optimizer)

    def after_training_exp(self, strategy, **kwargs) -> None:
        for group, base in zip(strategy.optimizer.param_groups, self.base_lrs):
            group["lr"] = base

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position (its length and base rates follow from the stage again)."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any], strategy=None) -> None:
        self.step = int(state["step"])
        if strategy is not None:
            self.apply(strategy.optimizer)


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

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any], strategy=None) -> None:
        self.steps_done, self.seconds = int(state["steps_done"]), float(state["seconds"])

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


CLOCK_FIELDS = ("train_iterations", "total_iterations", "train_exp_iterations")


class StageEMA(SupervisedPlugin):
    """An exponential moving average of the weights within one stage (timm's ``ModelEmaV3``,
    with its warm-up of the decay, so the first steps do not drag the start along); the stage
    ends with the averaged weights, before anything reads them: the evaluation, the stage
    checkpoint, and the remedies' end-of-stage work (EWC's Fisher information, the LwF teacher).
    It must therefore be the first plugin of the strategy.  Parameters only: the network keeps
    no running statistics that train (BatchNorm of a frozen backbone stays in eval mode)."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.ema = None
        self.steps = 0

    def before_training_exp(self, strategy, **kwargs) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(strategy.model, decay=self.decay, use_warmup=True, warmup_power=0.75,
                              exclude_buffers=True)
        self.steps = 0

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.steps += 1
        self.ema.update(strategy.model, step=self.steps)

    @torch.no_grad()
    def after_training_exp(self, strategy, **kwargs) -> None:
        for p, e in zip(strategy.model.parameters(), self.ema.module.parameters(), strict=True):
            p.copy_(e)
        self.ema = None

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": {k: v.detach().cpu().clone()
                                                 for k, v in self.ema.module.named_parameters()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], strategy=None) -> None:
        self.steps = int(state["steps"])
        for k, v in self.ema.module.named_parameters():
            v.copy_(state["weights"][k])


class EpochCheckpoint(SupervisedPlugin):
    """After every training epoch, hand ``save`` what continues the stage from there: weights,
    optimizer state, the positions of ``parts`` (plugins with ``state_dict``: the LR schedule,
    the progress line), every RNG state and Avalanche's clock counters.

    With ``pending`` set to such a state, the next experience continues after its epoch
    instead of starting over: the state is put back at the start of the experience (after
    the remedies took their teacher / memory from the finished stages) and Avalanche's epoch
    loop runs only the epochs left.  Given the same data and seeds, the rest of the stage is
    then the very computation an uninterrupted run does.
    """

    def __init__(self, save: Callable[[dict[str, Any]], None], parts: dict[str, Any]):
        super().__init__()
        self.save = save
        self.parts = parts
        self.pending: dict[str, Any] | None = None
        self._epochs = 0

    def before_training_exp(self, strategy, **kwargs) -> None:
        s = self.pending
        if s is None:
            return
        strategy.model.load_state_dict(s["model"])
        strategy.optimizer.load_state_dict(s["optimizer"])
        for name, part in self.parts.items():
            # every part is in the state, but a stage without EMA has no "ema" (the run checks
            # that the plan it resumes under agrees with the state: ``check_epoch_state``)
            if name in s["parts"] or name != "ema":
                part.load_state_dict(s["parts"][name], strategy)
        for k in ("train_iterations", "total_iterations"):
            setattr(strategy.clock, k, int(s["clock"][k]))
        set_rng_state(s["rng"])
        # Avalanche's loop reads train_epochs once, right after this hook: run the epochs left;
        # the full count is back before the first of them starts
        self._epochs = strategy.train_epochs
        strategy.train_epochs = max(self._epochs - int(s["epochs_done"]), 0)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        s = self.pending
        if s is None:
            return
        self.pending = None
        strategy.train_epochs = self._epochs
        strategy.clock.train_exp_epochs = int(s["epochs_done"])
        strategy.clock.train_exp_iterations = int(s["clock"]["train_exp_iterations"])
        set_rng_state(s["rng"])

    def after_training_epoch(self, strategy, **kwargs) -> None:
        clock = strategy.clock
        self.save({
            "epochs_done": clock.train_exp_epochs + 1,  # the clock counts this epoch after us
            "model": {k: v.detach().cpu() for k, v in strategy.model.state_dict().items()},
            "optimizer": strategy.optimizer.state_dict(),
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "clock": {k: int(getattr(clock, k)) for k in CLOCK_FIELDS},
            "rng": rng_state(),
        })

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.pending is not None:  # every epoch had been done: only the stage's end ran
            self.pending = None
            strategy.train_epochs = self._epochs


class TensorboardExtras(SupervisedPlugin):
    """What Avalanche's TensorboardLogger does not log, written to its writer: the loss of every
    iteration with its components (``criterion.last``), the learning rate of every parameter
    group, the run's settings as text, and after each stage a grid of predictions on a few
    validation images (``preview(model)`` returns that figure)."""

    def __init__(self, writer, settings: str = "", preview: Callable[[Any], Any] | None = None, log=print):
        super().__init__()
        self.writer = writer
        self.settings = settings
        self.preview = preview
        self.log = log
        self._wrote_settings = False

    def before_training(self, strategy, **kwargs) -> None:
        if self.settings and not self._wrote_settings:
            self.writer.add_text("settings", self.settings, global_step=strategy.clock.train_iterations)
            self._wrote_settings = True

    def after_training_iteration(self, strategy, **kwargs) -> None:
        x = strategy.clock.train_iterations  # Avalanche's step axis (the clock counts this one after us)
        self.writer.add_scalar("Loss_iter/train", float(strategy.loss.detach()), x)
        for name, value in getattr(strategy._criterion, "last", {}).items():
            self.writer.add_scalar(f"Loss_iter/{name}", float(value), x)
        for i, group in enumerate(strategy.optimizer.param_groups):
            self.writer.add_scalar(f"LR/{group.get('name', i)}", float(group["lr"]), x)

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.preview is None:
            return
        from .figures import figure_to_tensor

        model = strategy.model
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                fig = self.preview(model)
            self.writer.add_image("Predictions/val", figure_to_tensor(fig), strategy.clock.train_iterations)
        except Exception as e:  # a figure must never stop training
            self.log(f"warning: could not draw the prediction images ({e.__class__.__name__}: {e})")
        finally:
            model.train(was_training)
