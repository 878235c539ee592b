"""Per-stage training plans: which parts of the network move in a stage, and how fast.

A run trains one task per stage.  Its recipe may give every task a :class:`StagePlan`
(``"plan": {"seg": {...}, "det": {...}}`` in a config file); a task without one trains
every part, as before plans existed.  The parts are

* ``backbone`` - the timm feature extractor (frozen: no gradient, BatchNorm in eval mode);
* ``tail`` - the backbone's last stage alone (the layers from its stride-16 map to its
  stride-32 map; ``blocks.5``-``blocks.6`` of Lite0, 2.3 M weights), BatchNorm still in eval
  mode, at the backbone's learning rate.  A run that trains it keeps the cache: the cached
  stride-16 map is the last stage's input, and every pass on cached features recomputes the
  deepest map through the model's own last stage (``OneHeadNet.live_tail``);
* ``neck`` - the FPN layer;
* ``head`` - the head's hidden layers;
* ``output`` - the head's last layer, which emits every task's channel group;
* ``task_output`` (alone) - only the stage's own channel group of that layer: every other
  weight, the earlier tasks' output channels included, stays exactly where it was, so the
  stage cannot forget (a linear probe of the head's features, trained as a whole stage).

When no stage of a run trains the backbone, the run trains from the frozen-feature cache
(``feature_cache``): that is the point of freezing it, two CPU cores afford ~14x more
neck + head steps than whole-network steps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from .settings import from_known_fields

PARTS = ("backbone", "tail", "neck", "head", "output")
WHOLE = ("backbone", "neck", "head", "output")  # every part (the backbone holds its last stage)
TASK_OUTPUT = "task_output"  # a plan's only part: the stage's own output channels
SOLVERS = ("sgd", "logistic")


@dataclass
class StagePlan:
    train: list[str] = field(default_factory=lambda: list(WHOLE))  # the parts that move
    lr: float | None = None  # None: the run's lr
    backbone_lr_mult: float | None = None  # None: the run's
    # linear probe, then fine-tune (Kumar et al., ICLR 2022): the first epochs of the stage
    # fit only this task's output channels, so the shared layers' first gradients come from
    # a sensible head, not a random one
    head_warmup_epochs: int = 0
    views: int = 1  # cached training views per image (the first is the plain resize)
    # how many of those views are mosaics of four training images (``benchmarks.Mosaic``; the
    # last ones; dense tasks only).  Measured (report.md §A.3, seed 1): 2 of detection's 6 views
    # ended at mAP 0.043 against 0.053 without
    mosaic_views: int = 0
    # weight EMA within the stage (0: off); the stage ends with the averaged weights
    ema_decay: float = 0.0
    # the run's remedies that act in this stage (None: all of them); the others only keep their
    # records for the stages after (EWC's Fisher, the bases of gradient projection, the teacher)
    remedies: list[str] | None = None
    # how a ``task_output`` stage fits its rows: "sgd" (its epochs of the run's optimizer) or
    # "logistic" (a logistic regression on the pooled input of the output layer, solved to its
    # optimum by L-BFGS and folded into the rows: no epochs at all; ``probe.fit_output_rows``)
    solver: str = "sgd"
    # the logistic regression's inverse L2 strength, on standardised features (scikit-learn's C)
    logistic_c: float = 1.0

    def __post_init__(self) -> None:
        unknown = [p for p in self.train if p not in PARTS]
        if self.train != [TASK_OUTPUT] and (unknown or not self.train):
            raise ValueError(f"stage plan 'train' must list parts among {', '.join(PARTS)}, or be "
                             f"[\"{TASK_OUTPUT}\"] alone (got {self.train!r})")
        if self.views < 1:
            raise ValueError(f"stage plan 'views' must be at least 1 (got {self.views})")
        if not 0 <= self.mosaic_views < self.views:
            raise ValueError(f"stage plan 'mosaic_views' must be >= 0 and below 'views' ({self.views}: the first "
                             f"view is the plain resize), not {self.mosaic_views}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"stage plan 'ema_decay' must be in [0, 1) (got {self.ema_decay})")
        if self.remedies is not None and (not isinstance(self.remedies, list)
                                          or not all(isinstance(r, str) for r in self.remedies)):
            raise ValueError(f"stage plan 'remedies' must be a list of remedy names (got {self.remedies!r})")
        if self.head_warmup_epochs < 0:
            raise ValueError(f"stage plan 'head_warmup_epochs' must be >= 0 (got {self.head_warmup_epochs})")
        if self.solver not in SOLVERS:
            raise ValueError(f"stage plan 'solver' must be one of {', '.join(SOLVERS)} (got {self.solver!r})")
        if self.solver == "logistic" and not self.own_output_only:
            raise ValueError(f"stage plan 'solver': \"logistic\" fits only the stage's own output channels: it needs "
                             f"\"train\": [\"{TASK_OUTPUT}\"] (got {self.train!r})")
        if not self.logistic_c > 0:
            raise ValueError(f"stage plan 'logistic_c' must be > 0 (got {self.logistic_c})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StagePlan":
        return from_known_fields(cls, d, "stage plan setting(s)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def own_output_only(self) -> bool:
        return self.train == [TASK_OUTPUT]

    @property
    def parts(self) -> list[str]:
        """The parts whose parameters get a gradient (``task_output``: the output layer, of which
        the warm-up keeps all but the stage's own rows still; ``backbone``: its last stage too)."""
        if self.own_output_only:
            return ["output"]
        return list(self.train) + (["tail"] if "backbone" in self.train and "tail" not in self.train else [])

    @property
    def trains_tail_alone(self) -> bool:
        """The backbone's last stage moves and the rest of it does not: the cache stays valid."""
        return "tail" in self.train and "backbone" not in self.train

    def warmup_epochs(self, stage_epochs: int) -> int:
        """How many of the stage's epochs fit only its own output channels (by SGD)."""
        if self.solver == "logistic":
            return 0
        return stage_epochs if self.own_output_only else self.head_warmup_epochs

    def describe(self) -> str:
        if self.solver == "logistic":
            return "its own output channels only, as a logistic regression (L-BFGS)"
        return "its own output channels only" if self.own_output_only else ", ".join(self.train)

    def acting(self, strategy_names: list[str]) -> list[str]:
        """The run's remedies (``strategy_names``) that act in this stage.  None in a
        ``task_output`` stage: nothing an earlier task reads can move there, so every penalty,
        distillation and projection would only cost time (their end-of-stage records are kept)."""
        if self.own_output_only:
            return []
        return [n for n in strategy_names if self.remedies is None or n in self.remedies]


def resolve_plans(plan: dict[str, dict[str, Any]], order: list[str]) -> dict[str, StagePlan]:
    """Every task of the run gets its plan (the default plan where the recipe names none); a
    recipe's plans for tasks this run leaves out (``--tasks det``) are not used."""
    from .tasks import TASKS

    unknown = [t for t in plan if t not in TASKS]
    if unknown:
        raise ValueError(f"stage plan for unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    plans = {t: StagePlan.from_dict(plan.get(t, {})) for t in order}
    for t, p in plans.items():
        if p.mosaic_views and TASKS[t].reduce is not None:
            raise ValueError(f"stage plan for {t}: 'mosaic_views' tiles boxes or masks; {t}'s target is one "
                             "label per image")
    return plans


def uses_cache(plans: dict[str, StagePlan]) -> bool:
    """The frozen-feature cache is valid only when the backbone never moves (its last stage may:
    the cache holds its input)."""
    return all("backbone" not in p.parts for p in plans.values())


def trains_tail(plans: dict[str, StagePlan]) -> bool:
    """Some stage moves the backbone's last stage and none the rest of it: passes on cached
    features must recompute the deepest map (``OneHeadNet.live_tail``)."""
    return uses_cache(plans) and any(p.trains_tail_alone for p in plans.values())


def tail_prefixes(model, plan: StagePlan) -> tuple[str, ...]:
    """The parameter-name prefixes of the backbone's last stage when ``plan`` trains it apart
    from the rest of the backbone; otherwise none (the last stage is then simply backbone, and a
    backbone whose last stage cannot be split off is never asked to)."""
    return tuple(f"backbone.{n}." for n in model.last_stage_names) if plan.trains_tail_alone else ()


def part_of(name: str, model, tail: tuple[str, ...] = ()) -> str:
    """The plan part a parameter belongs to; ``tail``: :func:`tail_prefixes` of the stage's plan."""
    if name.startswith("backbone."):
        return "tail" if tail and name.startswith(tail) else "backbone"
    if name.startswith("neck."):
        return "neck"
    last = f"head.{len(model.head) - 1}."
    return "output" if name.startswith(last) else "head"


def apply_plan(model, plan: StagePlan) -> None:
    """Freeze what the plan keeps still (``requires_grad``); a frozen backbone stays in eval mode."""
    tail = tail_prefixes(model, plan)
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name, model, tail) in plan.parts)
    model.frozen_backbone = "backbone" not in plan.parts
    model.train(model.training)


def param_groups(model, lr: float, backbone_mult: float, wd: float, output_mult: float = 1.0,
                 plan: StagePlan | None = None) -> list[dict]:
    """The optimizer's parameter groups for a stage of ``plan`` (default: every part trains):
    the backbone at ``backbone_mult`` x lr, the output layer at ``output_mult`` x lr (a plan's
    own lr and backbone multiplier win).  Every parameter is in one of the groups (frozen ones
    at lr 0, so Avalanche's optimizer bookkeeping finds no 'new' parameter); no weight decay on
    norms, biases or the output layer (decay would shrink earlier tasks' output channels while
    they get no gradient)."""
    plan = plan or StagePlan()
    lr = plan.lr if plan.lr is not None else lr
    bb = plan.backbone_lr_mult if plan.backbone_lr_mult is not None else backbone_mult
    mult = {"backbone": bb, "tail": bb, "neck": 1.0, "head": 1.0, "output": output_mult}
    tail = tail_prefixes(model, plan)
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        part = part_of(name, model, tail)
        if part not in plan.parts:
            groups.setdefault(("frozen", False), []).append(p)
            continue
        decay = p.ndim > 1 and part != "output"
        groups.setdefault((part, decay), []).append(p)
    return [{"params": ps, "lr": 0.0 if part == "frozen" else lr * mult[part],
             "weight_decay": wd if decay else 0.0, "name": f"{part}{'' if decay else '-no-decay'}"}
            for (part, decay), ps in groups.items()]


class HeadWarmup(SupervisedPlugin):
    """For the first ``epochs`` epochs of an experience only the current task's output
    channels move.  Every layer before the output layer is taken out of autograd for those
    epochs (so the backward pass stops at the output layer: a warm-up epoch costs about a
    forward pass), and the other tasks' rows of the output layer get a zero gradient."""

    def __init__(self, epochs: int, rows: slice):
        super().__init__()
        self.epochs = epochs
        self.rows = rows
        self._held: list[torch.nn.Parameter] = []

    def _release(self) -> None:
        for p in self._held:
            p.requires_grad_(True)
        self._held = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs >= self.epochs:
            self._release()
            return
        if not self._held:
            out_layer = set(map(id, strategy.model.head[-1].parameters()))
            self._held = [p for p in strategy.model.parameters() if p.requires_grad and id(p) not in out_layer]
            for p in self._held:
                p.requires_grad_(False)

    def before_update(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs >= self.epochs:
            return
        out_layer = strategy.model.head[-1]
        for p in (out_layer.weight, out_layer.bias):
            if p.grad is not None:
                mask = torch.zeros_like(p.grad)
                mask[self.rows] = 1
                p.grad.mul_(mask)

    def after_training_epoch(self, strategy, **kwargs) -> None:
        # the clock still counts the epoch just finished; release before anything that follows
        # the warm-up (the next epoch, or the remedies' end-of-experience work such as EWC's Fisher)
        if strategy.clock.train_exp_epochs + 1 >= self.epochs:
            self._release()


class LogisticFit(SupervisedPlugin):
    """A ``"solver": "logistic"`` stage: before its first epoch, the stage's own output rows are
    set to the optimum of a logistic regression on the pooled input of the output layer, over
    the stage's training data (every cached view), and the stage's epochs are skipped
    (Avalanche's early stop).  Algorithm: :func:`~avalanche_onehead.probe.fit_output_rows`."""

    def __init__(self, task: str, c: float, log=print):
        super().__init__()
        self.task, self.c, self.log = task, c, log
        self.fitted: dict[str, Any] | None = None

    def before_training_epoch(self, strategy, **kwargs) -> None:
        from .probe import fit_output_rows

        if self.fitted is None:
            batches = ((mb[0], mb[1]) for mb in strategy.dataloader)
            self.fitted = fit_output_rows(strategy.model, batches, self.task, self.c)
            self.log(f"   fitted {self.task}'s output channels: logistic regression (C={self.c:g}) on "
                     f"{self.fitted['samples']} views x {self.fitted['features']} pooled features, "
                     f"train accuracy {self.fitted['train_accuracy']:.3f}")
        strategy.stop_training()
