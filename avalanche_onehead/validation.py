"""Run settings a user types or writes into a file: every value checked before anything runs.

One rule per setting serves three doors: a command-line flag (``flag_type``, an
argparse ``type=``), a ``--config`` JSON file or a run folder's ``config.json``
(``check_config_document``), and the assembled :class:`RunConfig`
(``check_run_config``).  A broken value is one :class:`SettingError` line naming
the flag, or the file and the field, and saying what is wrong.  The places a run
writes to (``--out``, ``eval.py --out``) are checked here too, before the work.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable

from . import rules as challenge_rules  # "rules" below are this module's setting rules
from .errors import OneHeadError
from .tasks import POOLS, TASKS

Rule = Callable[[Any], Any]  # returns the (normalised) value or raises ValueError(problem)

MAX_STRIDE = 32  # the backbones' deepest feature map: the input must divide into it
MAX_IMAGE_SIZE = 4096
MAX_SEED = (2**32 - 1 - 999) // 1000  # stage seeds are seed * 1000 + stage, numpy takes < 2**32


class SettingError(OneHeadError, ValueError):
    """A flag, config field or output place that cannot be used."""


class FieldError(ValueError):
    """A problem inside a nested setting; ``field`` is its dotted name (``model.detection.nms_iou``)."""

    def __init__(self, key: str, error: ValueError):
        inner = error.field if isinstance(error, FieldError) else ""
        self.field = key + ("." + inner if inner else "")
        self.problem = error.problem if isinstance(error, FieldError) else str(error)
        super().__init__(f"'{self.field}': {self.problem}")


def _named(name: str, e: ValueError) -> str:
    """``'lr': must be ...`` or ``'model.norm': must be ...`` for a top-level setting ``name``."""
    return str(FieldError(name, e))


# --- rules ------------------------------------------------------------------------------------

def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, str) else repr(v[:40])


def whole(lo: int | None = None, hi: int | None = None) -> Rule:
    def rule(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be a whole number, not {_show(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be {span}, not {v}")
        return v
    return rule


def number(lo: float | None = None, above: bool = False, hi: float | None = None) -> Rule:
    """A finite number ``>= lo`` (``> lo`` when ``above``) and ``<= hi``."""
    def rule(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"must be a number, not {_show(v)}")
        v = float(v)
        bound = "" if lo is None else f" {'>' if above else '>='} {lo:g}"
        bound += "" if hi is None else f" and <= {hi:g}"
        if not math.isfinite(v) or (lo is not None and (v <= lo if above else v < lo)) or \
                (hi is not None and v > hi):
            raise ValueError(f"must be a finite number{bound}, not {v:g}")
        return v
    return rule


def text(choices: tuple[str, ...] | None = None) -> Rule:
    def rule(v):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"must be a non-empty string, not {_show(v)}")
        if choices is not None and v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {_show(v)}")
        return v
    return rule


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, not {_show(v)}")
    return v


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def keyed_map(key_rule: Callable[[dict], None], value_rule: Rule, what: str) -> Rule:
    """An object of ``what`` -> value: ``key_rule`` checks its keys, ``value_rule`` each value."""
    def rule(v):
        if not isinstance(v, dict):
            raise ValueError(f"must be an object of {what} -> value, not {_show(v)}")
        key_rule(v)
        out = {}
        for k, x in v.items():
            try:
                out[k] = value_rule(x)
            except ValueError as e:
                raise FieldError(k, e) from None
        return out
    return rule


def _known_tasks(v: dict) -> None:
    unknown = [k for k in v if k not in TASKS]
    if unknown:
        raise ValueError(f"names unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")


def _neck_or_head_modules(v: dict) -> None:
    for k in v:
        if not isinstance(k, str) or k.split(".")[0] not in ("neck", "head") or "" in k.split("."):
            raise ValueError(f"names {k!r}, not a module of the neck or the head (e.g. neck.lateral.2, head.1)")


def task_map(value_rule: Rule) -> Rule:
    """``{"seg": ..., "det": ...}`` with known task names."""
    return keyed_map(_known_tasks, value_rule, "task")


def layer_map(value_rule: Rule) -> Rule:
    """``{"neck.lateral.2": ..., "head": ...}``: names of the neck's or the head's modules (or prefixes)."""
    return keyed_map(_neck_or_head_modules, value_rule, "layer")


def image_size(v: Any) -> int:
    v = whole()(v)
    if not 0 < v <= MAX_IMAGE_SIZE or v % MAX_STRIDE:
        raise ValueError(f"must be a positive multiple of {MAX_STRIDE} (the backbone's largest stride) "
                         f"up to {MAX_IMAGE_SIZE}, not {v}")
    return v


def epochs(v: Any) -> int:
    return whole(1)(v)


def device(v: Any) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    import torch

    v = text()(v)
    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {v!r} (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{v!r} asked for, but CUDA is not available here (no GPU, or a CPU-only torch); "
                             "use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{v!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{v!r} asked for, but MPS is not available here; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {v!r} (use cpu, cuda, cuda:N or mps)")
    return v


def strategy(v: Any) -> str:
    # deferred: strategies builds on the core; a module-level import here would close a package cycle
    from strategies import canonical

    return canonical(text()(v))


def order(v: Any) -> list[str]:
    from .tasks import parse_tasks

    if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v))):
        raise ValueError(f"must be a list of task names or 'seg,det,cls', not {_show(v)}")
    return parse_tasks(v)


def task_names(v: Any) -> list[str]:
    """A list of known task names (it may be empty)."""
    if not isinstance(v, list) or any(not isinstance(t, str) for t in v):
        raise ValueError(f"must be a list of task names, not {_show(v)}")
    _known_tasks(v)
    return v


def backbone(v: Any) -> str:
    import timm

    v = text()(v)
    if not timm.is_model(v):
        raise ValueError(f"{v!r} is not a timm model name")
    return v


def run_epochs(v: Any) -> int | dict[str, int]:
    """A config file's ``epochs``: N for every task, or ``{"seg": N, ...}``."""
    if isinstance(v, dict):
        return task_map(epochs)(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be a whole number or an object like {{\"seg\": 8, \"det\": 6}}, not {_show(v)}")
    return epochs(v)


def settings_of(cls: type, rules: dict[str, Rule], nested: dict[str, tuple[type, dict]] | None = None,
                refuse: dict[str, str] | None = None) -> Rule:
    """A rule for a JSON object of ``cls``'s fields: unknown keys refused, each value by its
    rule (or by the type of the field's default when the field has no rule of its own)."""
    nested = nested or {}
    refuse = refuse or {}

    def rule(v):
        if not isinstance(v, dict):
            raise ValueError(f"must be an object of {cls.__name__} fields, not {_show(v)}")
        known = {f.name: f for f in fields(cls)}
        for key, x in v.items():
            if key in refuse:
                raise FieldError(key, ValueError(refuse[key]))
            if key not in known:
                raise ValueError(f"unknown key {key!r}; known: {', '.join(sorted(set(known) - set(refuse)))}")
            try:
                if key in nested:
                    settings_of(*nested[key])(x)
                else:
                    (rules.get(key) or like_default(known[key]))(x)
            except ValueError as e:
                raise FieldError(key, e) from None
        return v
    return rule


def like_default(f) -> Rule:
    """The type of a field's default (ints for floats allowed); a ``None`` default takes anything."""
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else None)
    if default is None:
        return lambda v: v
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return whole()
    if isinstance(default, float):
        return number()
    if isinstance(default, str):
        return text()
    kind = type(default)

    def rule(v):
        if not isinstance(v, kind):
            raise ValueError(f"must be a JSON {'object' if kind is dict else kind.__name__}, not {_show(v)}")
        return v
    return rule


def _model_rules() -> Rule:
    from .detection import DetectionConfig
    from .model import ModelConfig

    det = {"stride": whole(1), "center_radius": number(0, above=True), "center_fraction": number(0),
           "score_threshold": number(0, hi=1), "nms_iou": number(0, above=True, hi=1),
           "pre_nms_topk": whole(1), "max_detections": whole(1), "focal_alpha": number(0, hi=1),
           "focal_gamma": number(0), "balance_boxes": boolean,
           "box_loss_weight": number(0), "quality_focal": boolean}
    rules = {"neck_channels": whole(1), "head_channels": whole(1), "head_layers": whole(*challenge_rules.HEAD_LAYERS),
             "norm": text(("none", "gn", "bn")), "groups": whole(1), "init": text(("dirac", "default")),
             "freeze_backbone_bn": boolean, "neck_relu": boolean, "head_residual": boolean,
             "semantic_channels": whole(0), "semantic_readers": optional(task_names),
             "pool": text(POOLS), "pool_sharpness": number(0, above=True),
             "num_classes": task_map(whole(1))}
    each_field = settings_of(ModelConfig, rules, nested={"detection": (DetectionConfig, det)},
                             refuse={k: "is a run setting: give it at the top level (or as a flag), not under 'model'"
                                     for k in ("backbone", "pretrained")})

    def model(v):
        each_field(v)
        if v.get("semantic_readers") is not None and not v.get("semantic_channels"):
            raise FieldError("semantic_readers", ValueError("needs semantic_channels > 0 (there is nothing to read)"))
        return v

    return model


def _plan_rules() -> Rule:
    from .stage_plans import PARTS, SOLVERS, TASK_OUTPUT, StagePlan, resolve_plans

    def names(v):
        if not isinstance(v, list) or any(not isinstance(n, str) for n in v):
            raise ValueError(f"must be a list of remedy names, not {_show(v)}")
        return v

    def parts(v):
        if v != [TASK_OUTPUT] and (not isinstance(v, list) or not v or any(p not in PARTS for p in v)):
            raise ValueError(f"must be a non-empty list of parts among {', '.join(PARTS)}, "
                             f"or [\"{TASK_OUTPUT}\"] alone, not {_show(v)}")
        return v

    each_field = settings_of(StagePlan, {
        "train": parts, "lr": optional(number(0, above=True)), "backbone_lr_mult": optional(number(0)),
        "head_warmup_epochs": whole(0), "views": whole(1, 64), "mosaic_views": whole(0, 63),
        "ema_decay": number(0, hi=0.9999), "remedies": optional(names), "solver": text(SOLVERS),
        "logistic_c": number(0, above=True)})

    def plan(v):
        each_field(v)
        StagePlan.from_dict(v)  # the checks across fields (a logistic solver needs ["task_output"])
        return v

    per_task = task_map(plan)

    def plans(v):
        v = per_task(v)
        resolve_plans(v, list(v))  # the checks that need the task (a mosaic tiles boxes or masks)
        return v

    return plans


def remedy_rules() -> dict[str, Rule]:
    """The rule of each remedy option (made when asked, so the replay cap is the rules' current one)."""
    return {
        "ewc_lambda": number(0), "ewc_mode": text(("separate", "online")),
        "ewc_decay": number(0, above=True, hi=1), "replay_mem_per_task": whole(1),
        "replay_per_step": whole(1, challenge_rules.MAX_REPLAY_PER_TASK_PER_STEP), "lwf_alpha": number(0),
        "lwf_temperature": number(0, above=True), "lwf_det_threshold": number(0, hi=1),
        "lwf_task_weights": task_map(number(0)),
        "kd_weight": number(0), "anchor_weight": number(0), "gpm_threshold": number(0, above=True, hi=1),
        "gpm_positions": whole(1), "gpm_views": whole(1), "gpm_layer_thresholds": layer_map(number(0, hi=1)),
        "num_tasks": whole(1), "seed": whole(0)}


def _remedy_rules() -> Rule:
    # deferred: strategies builds on the core; a module-level import here would close a package cycle
    from strategies import RemedyOptions

    return settings_of(RemedyOptions, remedy_rules())


RUN_RULES: dict[str, Rule] = {
    "strategy": strategy, "data_root": optional(text()), "order": order, "epochs": run_epochs,
    "image_size": image_size, "backbone": backbone, "pretrained": boolean, "seed": whole(0, MAX_SEED),
    "device": device, "out": optional(text()), "batch_size": whole(1), "eval_batch_size": whole(1),
    "lr": number(0, above=True), "backbone_lr_mult": number(0), "output_lr_mult": number(0),
    "weight_decay": number(0), "workers": whole(0), "max_images": optional(whole(1)),
    "task_weights": task_map(number(0)), "progress": boolean, "joint": boolean,
    "cache": boolean, "seg_loss_stride": whole(1, 32), "cache_dir": optional(text()),
}


def _field_rule(f) -> Rule:
    """The rule of a :class:`RunConfig` field (a field added later is held to its default's type)."""
    if f.name == "model":
        return _model_rules()
    if f.name == "remedy":
        return _remedy_rules()
    if f.name == "plan":
        return _plan_rules()
    return RUN_RULES.get(f.name) or like_default(f)


# --- the three doors ----------------------------------------------------------------------------

def flag_type(rule: Rule, parse: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """An argparse ``type=``: the text parsed by ``parse``, then checked by ``rule``."""
    def convert(s: str):
        try:
            return rule(parse(s))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def parsed(kind: type) -> Callable[[str], Any]:
    """``int`` or ``float`` of a flag's text, with a message that says which was expected."""
    def parse(s: str):
        try:
            return kind(s)
        except ValueError:
            raise ValueError(f"must be {'a whole number' if kind is int else 'a number'}, not {s!r}") from None
    return parse


def int_flag(rule: Rule) -> Callable[[str], Any]:
    return flag_type(rule, parsed(int))


def float_flag(rule: Rule) -> Callable[[str], Any]:
    return flag_type(rule, parsed(float))


def task_values(text: str, value: Callable[[str], Any] = parsed(float), form: str = "task=value") -> dict[str, Any]:
    """``"det=10,seg=1"`` -> ``{"det": value("10"), "seg": value("1")}``: the one reader of
    ``task=value,...`` flags (``--epochs``, ``--lwf-task-weights``, ``fork_run.py --epochs``),
    ``value`` the rule of one value, ``form`` how the flag's help writes one item.  Task names
    are checked by the setting's rule."""
    out: dict[str, Any] = {}
    for item in text.split(","):
        task, sep, v = item.partition("=")
        task = task.strip()
        if not sep or not task:
            raise ValueError(f"expected {form}[,{form}...], not {text.strip()!r}")
        if task in out:
            raise ValueError(f"names {task!r} twice")
        try:
            out[task] = value(v.strip())
        except ValueError as e:
            raise ValueError(f"{item.strip()!r}: {e} (expected {form}[,{form}...])") from None
    return out


def task_values_flag(rule: Rule, value: Callable[[str], Any] = parsed(float),
                     form: str = "task=value") -> Callable[[str], Any]:
    return flag_type(rule, lambda s: task_values(s, value, form))


def epochs_text(s: str) -> int | dict[str, int]:
    """``--epochs``: ``N`` for every stage, or ``task=N,...``."""
    return task_values(s, parsed(int), "task=N") if "=" in s else parsed(int)(s)


def task_flag(flag: str, value: str | list[str]) -> list[str]:
    """``--tasks``/``--order``: task names (or ``all``); an unknown one names the flag."""
    from .tasks import parse_tasks

    try:
        return parse_tasks(value)
    except ValueError as e:
        raise SettingError(flag, str(e)) from None


def check_config_document(doc: Any, path: str | Path) -> dict[str, Any]:
    """A ``--config`` file or a run folder's ``config.json``: an object of known run
    settings, each of the right type and range; errors name the file and the field."""
    from .training import RunConfig

    if not isinstance(doc, dict):
        raise SettingError(path, f"must hold a JSON object of run settings, not a JSON {type(doc).__name__}")
    known = {f.name: f for f in fields(RunConfig)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise SettingError(path, f"unknown run setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key, value in doc.items():
        try:
            _field_rule(known[key])(value)
        except ValueError as e:
            raise SettingError(path, _named(key, e)) from None
    return doc


def check_run_config(cfg: Any, where: Callable[[str], str] = lambda name: f"--{name.replace('_', '-')}") -> None:
    """Every field of the assembled :class:`RunConfig`, and what fields say together;
    ``where(field)`` is how the error names the field's origin (the flag by default)."""
    for f in fields(cfg):
        try:
            _field_rule(f)(getattr(cfg, f.name))
        except ValueError as e:
            raise SettingError(where(f.name), str(e)) from None
    missing = [t for t in cfg.order if t not in cfg.epochs]
    extra = [t for t in cfg.epochs if t not in cfg.order]
    if missing or extra:
        raise SettingError(where("epochs"), f"must give every task of the run ({', '.join(cfg.order)}) "
                           f"and no other, got {', '.join(cfg.epochs) or 'none'}")
    mem = cfg.remedy.get("replay_mem_per_task", 10)
    step = cfg.remedy.get("replay_per_step", 2)
    if "replay" in cfg.strategy.split("+") and mem < step:
        raise SettingError(where("remedy"), f"replay memory per task ({mem}) is smaller than the images "
                           f"replayed per step ({step})")
    named = [n.strip().lower() for n in cfg.strategy.split("+")]
    for task, plan in (cfg.plan or {}).items():
        stray = [r for r in plan.get("remedies") or [] if r not in named]
        if stray:
            raise SettingError(where("plan"), f"the {task} stage's remedies name {stray[0]!r}, which is not "
                               f"in the run's strategy {cfg.strategy!r}")
    norm = cfg.model.get("norm", "none") if isinstance(cfg.model, dict) else "none"
    if "gpm" in named and norm != "none":
        raise SettingError(where("strategy"), f"gpm protects the convs of neck and head and needs them without "
                           f"normalisation, but the model's norm is {norm!r} (use norm 'none', the default)")


# --- where results go ---------------------------------------------------------------------------

def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_place(path: Path, flag: str) -> None:
    """``path`` (to be created) can be made: its nearest existing parent is a writable folder."""
    base = _nearest_existing(path)
    if base != path.absolute() and not base.is_dir():
        raise SettingError(flag, f"{path} cannot be created: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SettingError(flag, f"{path} cannot be written: {base} is read-only or not writable")


def check_run_folder(out: Path, flag: str = "--out", overwrite: bool = False) -> None:
    """A new run's folder: absent or empty, unless ``overwrite`` is asked for a run folder."""
    from .run_folder import RunFolder

    if out.exists() and not out.is_dir():
        raise SettingError(flag, f"{out} exists and is not a folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        if not overwrite:
            hint = ("it holds a finished run" if RunFolder.METRICS in held else
                    f"it holds a run that can be continued with --resume {out}" if RunFolder.RESUME_STATE in held
                    else f"it holds {len(held)} entr{'y' if len(held) == 1 else 'ies'} ({', '.join(held[:3])}"
                         f"{', ...' if len(held) > 3 else ''})")
            raise SettingError(flag, f"{out} is not empty: {hint}; choose another --out, or --overwrite "
                               "to clear it first")
        if RunFolder.CONFIG not in held:
            raise SettingError(flag, f"{out} is not empty and not a run folder (no {RunFolder.CONFIG}): "
                               "--overwrite clears only run folders")
    check_writable_place(out, flag)


def check_output_file(path: str | Path | None, flag: str = "--out") -> None:
    """A file to be written at the end (``eval.py --out``): its folder exists and is writable."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise SettingError(flag, f"{path} is a folder, not a file")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise SettingError(flag, f"{path} cannot be written: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SettingError(flag, f"{path} cannot be written: {parent} is read-only or not writable")


def check_metrics_document(doc: Any, path: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json`` as comparisons read it: strategy, tasks, and per task the
    metric name, baseline, final value and drop; the training times."""
    def bad(problem: str):
        raise SettingError(path, f"not a run's metrics file: {problem}")

    if not isinstance(doc, dict):
        bad(f"the top level is a JSON {type(doc).__name__}, not an object")
    if not isinstance(doc.get("strategy"), str):
        bad("no 'strategy' name")
    tasks = doc.get("tasks")
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
        bad("no 'tasks' list")
    for key in ("metric_names", "baseline", "final", "drop_pct"):
        entry = doc.get(key)
        if not isinstance(entry, dict) or any(t not in entry for t in tasks):
            bad(f"'{key}' is missing or lacks a task of {', '.join(tasks)}")
        kinds = (str,) if key == "metric_names" else (int, float)
        if not all(isinstance(entry[t], kinds) and not isinstance(entry[t], bool) for t in tasks):
            bad(f"'{key}' holds a value of the wrong type")
    for key in ("train_seconds", "stage_seconds"):
        if key not in doc:
            bad(f"no '{key}'")
    if not _is_number(doc["train_seconds"]) or not isinstance(doc["stage_seconds"], dict) or \
            not all(_is_number(v) for v in doc["stage_seconds"].values()):
        bad("'train_seconds' or 'stage_seconds' holds a value of the wrong type")
    return doc


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
