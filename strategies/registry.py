"""One registry of remedies; ``--strategy`` names are joined with ``+`` in any order.

To add a remedy: write its algorithm (unless Avalanche has it) apart from the thin plugin that
applies it (``regularization.py`` and ``remedies.py``, or one module of its own such as
``anchor.py``), and add one ``Remedy`` entry below; options it needs go into
:class:`RemedyOptions`.  A run folder keeps each remedy's resume state under the remedy's name
here (the teacher that LwF and KD share under :data:`TEACHER`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from avalanche_onehead import rules
from avalanche_onehead.settings import from_known_fields, setting

from .anchor import PretrainedAnchor
from .projection import GradientProjection
from .remedies import FeatureKD, LwFDistillation, OneHeadEWC, PreviousModel, TaskBudgetReplay


@dataclass
class RemedyOptions:
    """Every remedy's options, with defaults and help texts: ``run.py`` and ``fork_run.py`` make
    their remedy flags from these fields; a recipe sets them under ``"remedy"``.  Which remedy
    an option belongs to is its :class:`Remedy` entry's ``options``."""

    ewc_lambda: float = setting(1000.0, help="EWC penalty weight")
    ewc_mode: str = setting("separate", help="EWC mode: separate or online")
    ewc_decay: float = setting(0.9, help="online EWC decay")
    replay_mem_per_task: int = setting(10, help="stored images per task", flag="--replay-mem")
    replay_per_step: int = setting(2, help="replayed images of each earlier task per step, <= "
                                           f"{rules.MAX_REPLAY_PER_TASK_PER_STEP} (the challenge's rule)")
    lwf_alpha: float = setting(1.0, help="LwF distillation weight")
    lwf_temperature: float = setting(2.0, help="LwF temperature")
    lwf_det_threshold: float = setting(0.3, help="teacher confidence from which LwF distils detection", cli=False)
    # a task first distilled in a later stage can be held harder without changing the stages before
    lwf_task_weights: dict[str, float] = setting(
        help="weight of each distilled task's LwF term, times --lwf-alpha, e.g. det=10", factory=dict,
        metavar="TASK=W,...", default_text="1 each")
    kd_weight: float = setting(1.0, help="feature distillation weight")
    anchor_weight: float = setting(1.0, help="pretrained-feature anchor weight")
    gpm_threshold: float = setting(0.97, help="share of each earlier task's layer-input energy whose directions "
                                              "gradient projection keeps still")
    gpm_positions: int = setting(256, help="places per training view at which gradient projection samples a "
                                           "layer's inputs")
    gpm_views: int = setting(480, help="training views of a finished stage from which gradient projection "
                                       "estimates its bases (a seeded random subset)")
    gpm_layer_thresholds: dict[str, float] = setting(
        help="a threshold of its own for some convs, by module name or prefix (0: not held), e.g. "
             "neck.lateral.2=0,head=0.995", factory=dict, metavar="LAYER=T,...", default_text="none")
    num_tasks: int = setting(3, help="tasks in the run (set by the run)", cli=False)
    seed: int = setting(0, help="the run's seed (set by the run)", cli=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RemedyOptions":
        return from_known_fields(cls, d, "remedy option(s)")


class _Shared:
    """Objects several remedies share within one strategy (the teacher)."""

    def __init__(self) -> None:
        self.teacher: PreviousModel | None = None

    def previous_model(self, plugins: list[Any]) -> PreviousModel:
        if self.teacher is None:
            self.teacher = PreviousModel()
            plugins.insert(0, self.teacher)  # snapshot before the distillers need it
        return self.teacher


def _ewc(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    if o.ewc_mode not in ("separate", "online"):
        raise ValueError(f"ewc_mode must be 'separate' or 'online', not {o.ewc_mode!r}")
    return [OneHeadEWC(o.ewc_lambda, mode=o.ewc_mode,
                       decay_factor=o.ewc_decay if o.ewc_mode == "online" else None)]


def _replay(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    return [TaskBudgetReplay(o.replay_mem_per_task, o.replay_per_step, o.num_tasks, o.seed)]


def _lwf(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    return [LwFDistillation(shared.previous_model(plugins), o.lwf_alpha, o.lwf_temperature, o.lwf_det_threshold,
                           o.lwf_task_weights)]


def _kd(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    return [FeatureKD(shared.previous_model(plugins), o.kd_weight)]


def _gpm(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    return [GradientProjection(o.gpm_threshold, o.gpm_positions, o.gpm_views, seed=o.seed,
                               layer_thresholds=o.gpm_layer_thresholds)]


def _anchor(o: RemedyOptions, shared: _Shared, plugins: list[Any]) -> list[Any]:
    return [PretrainedAnchor(o.anchor_weight)]


@dataclass(frozen=True)
class Remedy:
    name: str
    summary: str
    make: Callable[[RemedyOptions, _Shared, list[Any]], list[Any]]
    options: tuple[str, ...] = ()  # the RemedyOptions fields it reads


REMEDIES: dict[str, Remedy] = {
    r.name: r
    for r in (
        Remedy("naive", "no remedy: fine-tune on each task in turn (the forgetting lower bound)",
               lambda o, s, p: []),
        Remedy("ewc", "Elastic Weight Consolidation (Avalanche EWCPlugin): Fisher-weighted pull towards "
                      "earlier weights (ewc_lambda, ewc_mode separate|online, ewc_decay)", _ewc,
               ("ewc_lambda", "ewc_mode", "ewc_decay")),
        Remedy("replay", "task-balanced replay (Avalanche ReplayPlugin): replay_mem_per_task stored, "
                         f"replay_per_step (<= {rules.MAX_REPLAY_PER_TASK_PER_STEP}) replayed per earlier task "
                         "per step", _replay, ("replay_mem_per_task", "replay_per_step")),
        Remedy("lwf", "Learning without Forgetting on dense outputs: distil the earlier tasks' output "
                      "channels from the previous model (lwf_alpha, lwf_temperature, lwf_task_weights)", _lwf,
               ("lwf_alpha", "lwf_temperature", "lwf_det_threshold", "lwf_task_weights")),
        Remedy("kd", "feature distillation: MSE to the previous model's neck features (kd_weight)", _kd,
               ("kd_weight",)),
        Remedy("anchor", "pretrained-feature anchor: MSE of the pooled neck features to the untrained "
                         "model's, in every stage, on the current images (anchor_weight)", _anchor,
               ("anchor_weight",)),
        Remedy("gpm", "Gradient Projection Memory: each shared conv's updates leave the input space of the "
                      "earlier tasks' views untouched, their read-out rows stay (gpm_threshold, gpm_positions, "
                      "gpm_views, gpm_layer_thresholds)", _gpm, ("gpm_threshold", "gpm_positions", "gpm_views", "gpm_layer_thresholds")),
    )
}


def parse_strategy(spec: str) -> list[str]:
    """``"ewc+replay"`` -> ``["ewc", "replay"]``; unknown or repeated names are one clear error."""
    names = [n.strip().lower() for n in spec.split("+")]
    known = ", ".join(REMEDIES)
    if not spec.strip() or any(not n for n in names):
        raise ValueError(f"bad --strategy {spec!r}: names joined by '+'; known remedies: {known}")
    unknown = [n for n in names if n not in REMEDIES]
    if unknown:
        raise ValueError(f"unknown remedy {unknown[0]!r} in --strategy {spec!r}; known remedies: {known}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"remedy {repeated[0]!r} named twice in --strategy {spec!r}; known remedies: {known}")
    if "naive" in names and len(names) > 1:
        raise ValueError("'naive' means no remedy and cannot be combined with others")
    return names


def options_of(spec: str) -> list[str]:
    """The :class:`RemedyOptions` fields the remedies of ``spec`` read, in registry order."""
    names = parse_strategy(spec)
    return [o for name in REMEDIES if name in names for o in REMEDIES[name].options]


def canonical(spec: str) -> str:
    """Order-independent name: ``"replay+ewc"`` -> ``"ewc+replay"`` (registry order)."""
    names = parse_strategy(spec)
    return "+".join(n for n in REMEDIES if n in names)


TEACHER = "teacher"  # the resume-state name of the teacher several remedies share


@dataclass
class Remedies:
    """A strategy's plugins, and those that keep resume state, by registry name."""

    plugins: list[Any] = field(default_factory=list)
    stateful: dict[str, Any] = field(default_factory=dict)
    by_name: dict[str, list[Any]] = field(default_factory=dict)  # registry name -> its plugins

    def act_in_stage(self, names: list[str]) -> None:
        """Only the remedies ``names`` act in the coming stage (a stage plan's ``remedies``);
        the others keep their end-of-stage records (EWC's Fisher, gpm's bases, the teacher)."""
        for name, plugins in self.by_name.items():
            for p in plugins:
                if hasattr(p, "active"):
                    p.active = name in names

    def resume_state(self) -> dict[str, dict[str, Any]]:
        return {name: p.resume_state() for name, p in self.stateful.items()}

    def restore(self, states: dict[str, dict[str, Any]], strategy, finished: list) -> None:
        """Each remedy's state from ``states`` (a remedy a run did not have starts empty)."""
        for name, p in self.stateful.items():
            p.restore(states.get(name, {}), strategy, finished)

    def notes(self) -> list[str]:
        """One line from each remedy that has something to say about its state (after a stage)."""
        return [n for n in (p.note() for p in self.plugins if hasattr(p, "note")) if n]

    def check_model(self, model) -> None:
        """Each remedy's check of what it needs from the model (gpm: the layers its options name),
        before anything trains."""
        for p in self.plugins:
            if hasattr(p, "check_model"):
                p.check_model(model)

    def rebuilders(self, acting_later: Collection[str], stages_left: int) -> list[Any]:
        """The remedies that recompute per-stage state from a finished stage's checkpoint (EWC,
        gpm) and whose state the ``stages_left`` stages still to train read (``acting_later``:
        the remedies acting in one of them)."""
        return [p for name, plugins in self.by_name.items() for p in plugins
                if hasattr(p, "rebuild_stage") and p.read_later(name in acting_later, stages_left)]


def build_remedies(spec: str, options: RemedyOptions | None = None) -> Remedies:
    """The Avalanche plugins of a strategy spec, in a working order (teacher first)."""
    o = options or RemedyOptions()
    remedies = Remedies()
    shared = _Shared()
    names = {}  # plugin -> the registry name its resume state is kept under
    for name in REMEDIES:  # registry order: the composition does not depend on spelling order
        if name in parse_strategy(spec):
            made = REMEDIES[name].make(o, shared, remedies.plugins)
            names.update({id(p): name for p in made})
            remedies.by_name[name] = made
            remedies.plugins += made
    if shared.teacher is not None:
        names[id(shared.teacher)] = TEACHER
    remedies.stateful = {names[id(p)]: p for p in remedies.plugins if hasattr(p, "resume_state")}
    return remedies


def build_plugins(spec: str, options: RemedyOptions | None = None) -> list[Any]:
    """The Avalanche plugins of a strategy spec (:func:`build_remedies` without the names)."""
    return build_remedies(spec, options).plugins
