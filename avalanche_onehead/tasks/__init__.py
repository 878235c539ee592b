"""The tasks: one module each (``seg``, ``det``, ``cls``), which registers itself in
:data:`TASKS`; this package only collects them (see ``registry.py`` for what a task is)."""
from . import cls, det, seg  # noqa: F401  (importing a task module registers it)
from .registry import (POOLS, TASKS, PredictionContext, PredictionOutput, Target, TaskSpec, check_pool, decode_batch,
                       parse_tasks, register, spatial_pool, task_of_label)

#: the challenge's sequence: the built-in tasks by label (seg -> det -> cls)
DEFAULT_ORDER = tuple(TASKS)

__all__ = ["DEFAULT_ORDER", "POOLS", "TASKS", "PredictionContext", "PredictionOutput", "Target", "TaskSpec",
           "check_pool", "decode_batch", "parse_tasks", "register", "spatial_pool", "task_of_label"]
