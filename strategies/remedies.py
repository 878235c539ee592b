"""Forgetting remedies as Avalanche plugins for the multi-output one-head model.

* :class:`OneHeadEWC` - Avalanche's stock ``EWCPlugin`` (separate / online), plus the
  state a resumed run needs.
* :class:`TaskBudgetReplay` - Avalanche's ``ReplayPlugin`` with an experience- (= task-)
  balanced buffer of a fixed size per task and a hard cap on the replayed images per
  earlier task in every step (``rules.MAX_REPLAY_PER_TASK_PER_STEP``).
* :class:`PreviousModel` - the teacher (a frozen copy of the model from before the
  experience, after the first one) shared by :class:`LwFDistillation` (output distillation
  of the earlier tasks' channel groups) and :class:`FeatureKD` (neck-feature distillation).

The teacher and the two distillers are thin wrappers: their algorithms (:class:`~strategies.regularization.Teacher`,
:class:`~strategies.regularization.DenseLwF`, :func:`~strategies.regularization.feature_distillation`)
live in ``regularization.py``, as Avalanche keeps ``LearningWithoutForgetting`` apart from
``LwFPlugin``.  Why our own distillation: Avalanche's ``LwFPlugin`` assumes 2-D classification
logits and class targets; here the earlier tasks' outputs are dense maps.
"""
from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, ReplayPlugin
from avalanche.training.storage_policy import ExperienceBalancedBuffer
from avalanche.training.utils import ParamData
from torch import Tensor

from avalanche_onehead import rules
from avalanche_onehead.tasks import TASKS, task_of_label

from .regularization import DenseLwF, Teacher, feature_distillation


def current_task(strategy) -> str:
    return task_of_label(int(strategy.experience.task_labels[0]))


class OneHeadEWC(EWCPlugin):
    """Stock EWC (its penalty is added in ``before_backward``); resumable.

    Its state is two model-sized tensors per finished task.  The weights it keeps are
    those of each stage's checkpoint, and the Fisher pass is a fixed computation on
    them, so a resume state holds only the RNG state each pass started from: a resumed
    run recomputes the same estimates (:meth:`rebuild_stage`) instead of storing them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.active = True  # False: a stage whose plan leaves EWC out (its Fisher is still computed)
        self.fisher_rng: dict[int, dict[str, Any]] = {}
        self._rebuild: dict[int, dict[str, Any]] = {}

    def before_backward(self, strategy, **kwargs):
        if self.active:
            super().before_backward(strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        from avalanche_onehead.plugins import rng_state

        self.fisher_rng[int(strategy.clock.train_exp_counter)] = rng_state()
        super().after_training_exp(strategy, **kwargs)

    def resume_state(self) -> dict[str, Any]:
        return {"fisher_rng": dict(self.fisher_rng)}

    def restore(self, state: dict[str, Any], strategy, finished) -> None:
        self.saved_params.clear()
        self.importances.clear()
        self.fisher_rng = {int(t): s for t, s in state.get("fisher_rng", {}).items()}
        self._rebuild = dict(self.fisher_rng)
        for attr in ("saved_params", "importances"):  # the tensors themselves (run folders of before)
            target = getattr(self, attr)
            for t, ps in state.get(attr, {}).items():
                target[int(t)] = {k: ParamData(k, v.shape, init_tensor=v.clone(), device=v.device)
                                  for k, v in ps.items()}

    def needs_rebuild(self, index: int) -> bool:
        return index in self._rebuild

    def read_later(self, acts_later: bool, stages_left: int) -> bool:
        """Always: the end of every stage, the last one's too, builds on the finished stages'
        estimates (Avalanche's online mode sums them; both modes drop the previous weights)."""
        return True

    def rebuild_stage(self, strategy, index: int, experience, **kwargs) -> None:
        """What :meth:`after_training_exp` computed at the end of finished stage ``index``,
        again: the model must hold that stage's final weights (its checkpoint) and plan."""
        from avalanche_onehead.plugins import set_rng_state

        if index not in self._rebuild:
            return
        before = strategy.experience, strategy.clock.train_exp_counter
        strategy.experience, strategy.clock.train_exp_counter = experience, index
        strategy.model.to(strategy.device)
        try:
            set_rng_state(self._rebuild.pop(index))
            self.after_training_exp(strategy, **kwargs)
        finally:
            strategy.experience, strategy.clock.train_exp_counter = before


class TaskBudgetReplay(ReplayPlugin):
    """Replay with ``mem_per_task`` stored images per task and ``per_step`` replayed
    images per earlier task in each training step (at most ``rules.MAX_REPLAY_PER_TASK_PER_STEP``,
    enforced)."""

    def __init__(self, mem_per_task: int = 10, per_step: int = 2, num_tasks: int = 3, seed: int = 0):
        rules.check_replay_per_step(per_step)
        if mem_per_task < per_step:
            raise ValueError(f"replay memory per task ({mem_per_task}) is smaller than per_step ({per_step})")
        policy = ExperienceBalancedBuffer(mem_per_task * num_tasks, adaptive_size=False,
                                          num_experiences=num_tasks)
        super().__init__(mem_size=mem_per_task * num_tasks, batch_size_mem=per_step,
                         task_balanced_dataloader=True, storage_policy=policy)
        self.mem_per_task = mem_per_task
        self.per_step = per_step
        self.seed = seed
        self.active = True  # False: a stage whose plan leaves replay out (the memory is still filled)

    def memory_tasks(self) -> int:
        return len(self.storage_policy.buffer_groups)

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True,
                            drop_last: bool = False, **kwargs):
        if not self.active:
            return None
        # the memory batch is split evenly over the stored tasks: per_step each
        self.batch_size_mem = self.per_step * max(self.memory_tasks(), 1)
        return super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle,
                                           drop_last=drop_last, **kwargs)

    def _update_seeded(self, strategy, exp, index: int) -> None:
        # seeded on its own: a resumed run rebuilds the very same memory
        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 7919 + index)
            self.storage_policy.post_adapt(strategy, exp)

    def after_training_exp(self, strategy, **kwargs):
        self._update_seeded(strategy, strategy.experience, strategy.experience.current_experience)

    def resume_state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any], strategy, finished) -> None:
        for exp in finished:
            self._update_seeded(strategy, exp, exp.current_experience)


class PreviousModel(SupervisedPlugin):
    """The shared :class:`~strategies.regularization.Teacher`: taken before each experience,
    told which task each experience trained, asked for its outputs on the current mini-batch."""

    def __init__(self):
        super().__init__()
        self.snapshot = Teacher()

    @property
    def teacher(self) -> torch.nn.Module | None:
        return self.snapshot.model

    @teacher.setter
    def teacher(self, model: torch.nn.Module | None) -> None:
        self.snapshot.model = model

    @property
    def trained(self) -> list[str]:
        return self.snapshot.trained

    @trained.setter
    def trained(self, tasks: list[str]) -> None:
        self.snapshot.trained = list(tasks)

    def before_training_exp(self, strategy, **kwargs):
        self.snapshot.take(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        self.snapshot.learned(current_task(strategy))

    def earlier_tasks(self, strategy) -> list[str]:
        return self.snapshot.earlier_than(current_task(strategy))

    def outputs(self, strategy):
        return self.snapshot.outputs(strategy.mb_x, strategy.clock.train_iterations)

    def resume_state(self) -> dict[str, Any]:
        return {"trained": list(self.trained)}

    def restore(self, state: dict[str, Any], strategy, finished) -> None:
        # a run forked from another remedy's first stage carries no state of ours
        self.trained = state.get("trained", [task_of_label(int(e.task_labels[0])) for e in finished])


def distillation_term(task: str):
    """``task``'s own LwF term (``TaskSpec.distill``), or None when it has none."""
    return TASKS[task].distill


class _Distillation(SupervisedPlugin):
    """Adds ``weight * penalty(strategy)`` to the loss of every training batch."""

    def __init__(self, teacher: PreviousModel, weight: float):
        super().__init__()
        self.teacher = teacher
        self.weight = weight
        self.active = True  # False: a stage whose plan leaves this remedy out
        self.last = 0.0  # latest penalty, for inspection

    def penalty(self, strategy) -> Tensor | None:
        raise NotImplementedError

    def before_backward(self, strategy, **kwargs):
        if not self.active:
            return
        p = self.penalty(strategy)
        if p is not None:
            self.last = float(p.detach())
            strategy.loss = strategy.loss + self.weight * p


class LwFDistillation(_Distillation):
    """Learning without Forgetting for dense outputs (:class:`~strategies.regularization.DenseLwF`)
    on every training batch, current and replayed images alike: the EARLIER tasks' output channel
    groups are pulled towards the teacher's, each by its task's own term (``TaskSpec.distill``,
    given ``temperature`` and ``det_threshold``, weighted by ``task_weights``).  A task without a
    term is not distilled."""

    def __init__(self, teacher: PreviousModel, alpha: float = 1.0, temperature: float = 2.0,
                 det_threshold: float = 0.3, task_weights: dict[str, float] | None = None):
        super().__init__(teacher, alpha)
        self.lwf = DenseLwF(distillation_term, temperature, det_threshold, task_weights)

    @property
    def alpha(self) -> float:
        return self.weight

    @property
    def temperature(self) -> float:
        return self.lwf.temperature

    @property
    def task_weights(self) -> dict[str, float]:
        return self.lwf.task_weights

    def penalty(self, strategy) -> Tensor | None:
        if self.teacher.teacher is None:
            return None
        tasks = self.lwf.distilled(self.teacher.earlier_tasks(strategy))
        if not tasks:
            return None
        return self.lwf.penalty(strategy.mb_output, self.teacher.outputs(strategy), tasks)


class FeatureKD(_Distillation):
    """Feature-level distillation (:func:`~strategies.regularization.feature_distillation`) of the
    neck features, the input of the single head, on every training batch."""

    def __init__(self, teacher: PreviousModel, weight: float = 1.0):
        super().__init__(teacher, weight)

    def penalty(self, strategy) -> Tensor | None:
        if self.teacher.teacher is None:
            return None
        return feature_distillation(strategy.mb_output.features, self.teacher.outputs(strategy).features)
