"""Train the one-head model over the task stream and write a run folder.

    python experiments/run.py --strategy naive --data-root data       # or: onehead-run ...
    python experiments/run.py --tasks det          # one task alone (a single-task baseline)
    python experiments/run.py --strategy ewc+replay --ewc-lambda 5000
    python experiments/run.py --config experiments/configs/NAME.json
    python experiments/run.py --resume runs/ewc+replay-20261121-101500

Where the settings come from, later winning: RunConfig's defaults, then the recipe (the
--config file, else experiments/configs/default.json), then the flags given on the command
line (even a flag that repeats its default).  On the synthetic benchmark without --config
the run is a smoke run: the default recipe at 128 px with 2 epochs per stage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from avalanche_onehead import validation as check
from avalanche_onehead.cli import OneLineParser, add_setting_flags, fail, show_value
from avalanche_onehead.settings import defaults
from avalanche_onehead.training import DEFAULT_EPOCHS, RunConfig
from avalanche_onehead.validation import SettingError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "default.json"
SMOKE_IMAGE_SIZE = 128  # the synthetic benchmark's own image size
SMOKE_EPOCHS = 2
REMEDY = "remedy_"  # the namespace prefix of the remedy flags (RemedyOptions fields)
# run settings checked as their flag is read; the others (strategy, order) once the recipe is merged
CHECKED_AT_PARSE = ("epochs", "image_size", "backbone", "seed", "device", "batch_size", "lr", "workers",
                    "max_images")
COMMAND_FLAGS = {"list_strategies": False, "tasks": None, "config": None, "resume": None, "overwrite": False}


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise SettingError(path, f"not a readable JSON config ({str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__})") from None


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe file's run settings, every one checked; errors name the file and the field."""
    return dict(check.check_config_document(read_json(path), path))


def default_recipe() -> dict[str, Any]:
    """The tuned recipe a run uses without --config ({} where there is none)."""
    return read_recipe(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}


def add_remedy_flags(parser, shown: str | None = None) -> dict[str, str]:
    """The flags of the remedy options (RemedyOptions fields), dest ``remedy_<field>``; each
    shows as its default the default recipe's value where it has one, or ``shown``."""
    from strategies import RemedyOptions

    try:
        recipe = {} if shown else default_recipe().get("remedy", {})
    except ValueError:  # a broken default recipe is reported when a run reads it
        recipe = {}
    g = parser.add_argument_group("remedy options (RemedyOptions; a recipe sets them under 'remedy')")
    values = {f: shown for f in RemedyOptions.__dataclass_fields__} if shown else \
        {k: f"from the default recipe, {show_value(v)}" for k, v in recipe.items()}
    layers = {"gpm_layer_thresholds": lambda s: check.task_values(s, check.parsed(float), "layer=threshold")}
    return add_setting_flags(g, RemedyOptions, check.remedy_rules(), dest_prefix=REMEDY, shown=values,
                             parsers=layers)


def build_parser() -> argparse.ArgumentParser:
    """The run command's flags: one per RunConfig and RemedyOptions field that has one, each
    with the default a run without --config really uses, plus the command's own flags."""
    from strategies import REMEDIES

    try:
        recipe = default_recipe()
    except ValueError:
        recipe = {}
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run settings (RunConfig; a recipe file may set any of them, and more)")
    shown = {k: f"from the default recipe, {show_value(v)}" for k, v in recipe.items()}
    smoke = "{} on the synthetic benchmark without --config"
    add_setting_flags(g, RunConfig, {k: check.RUN_RULES[k] for k in CHECKED_AT_PARSE},
                      parsers={"epochs": check.epochs_text}, shown=shown,
                      notes={"strategy": f"naive with --joint; known remedies: {', '.join(REMEDIES)}",
                             "epochs": smoke.format(f"{SMOKE_EPOCHS} each"),
                             "image_size": smoke.format(SMOKE_IMAGE_SIZE)})
    add_remedy_flags(p)
    c = p.add_argument_group("command")
    c.add_argument("--config", default=None, metavar="FILE.json",
                   help=f"recipe file of run settings (RunConfig fields, remedy options under 'remedy'); flags "
                        f"given on the command line win over it (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})")
    c.add_argument("--tasks", default=None, help="train only these tasks, in --order (e.g. det)")
    c.add_argument("--list-strategies", action="store_true", help="list the remedies and exit")
    c.add_argument("--overwrite", action="store_true",
                   help="clear the --out run folder first (only a folder holding a run's config.json)")
    c.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a killed run from its last finished stage (same settings)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags; ``given`` names the ones written on the command line (the settings'
    flags are in the namespace only when given, so ``--strategy naive`` beats a recipe's strategy)."""
    args = build_parser().parse_args(argv)
    args.given = set(setting_flags(args)) | {k for k, d in COMMAND_FLAGS.items() if getattr(args, k) != d}
    return args


def setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags: RunConfig fields, and remedy options as ``remedy_<field>``."""
    return {k: v for k, v in vars(args).items() if k not in COMMAND_FLAGS and k != "given"}


def main(argv=None) -> int:
    args = parse_args(argv)
    from strategies import REMEDIES

    if args.list_strategies:
        for r in REMEDIES.values():
            print(f"{r.name:10s} {r.summary}")
        return 0
    from avalanche_onehead.run_folder import RunFolder
    from avalanche_onehead.training import default_run_dir, run
    from strategies import canonical

    with fail():
        if args.resume:
            cfg = resumed_config(Path(args.resume), args)
            RunFolder(cfg.out).load_resume_state(["joint"] if cfg.joint else cfg.order)
            check_data_before_run(cfg)
            run(cfg, resume=True)
        else:
            cfg = make_config(args)
            check_data_before_run(cfg)
            cfg.out = cfg.out or str(default_run_dir("joint" if cfg.joint else canonical(cfg.strategy)))
            check.check_run_folder(Path(cfg.out), overwrite=args.overwrite)
            run_in_new_folder(cfg, run, clear=args.overwrite)
    return 0


def flag_of(dest: str) -> str:
    """The flag a namespace entry comes from (``remedy_replay_mem_per_task`` -> ``--replay-mem``)."""
    for action in build_parser()._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return "--" + dest.replace("_", "-")


def resumed_config(run_dir: Path, args):
    """The settings a run folder was started with; only --no-progress may be added."""
    from avalanche_onehead.run_folder import RunFolder

    extra = sorted(args.given - {"resume", "progress"})
    if extra:
        flags = ", ".join(flag_of(a) for a in extra)
        raise SettingError("--resume", f"continues {run_dir} with the settings in its config.json; "
                           f"drop {flags} (or start a new run)")
    cfg_file = RunFolder(run_dir).config_file
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not a run folder (no {cfg_file.name})")
    return folder_config(read_json(cfg_file), cfg_file, out=str(run_dir), progress="progress" not in args.given)


def folder_config(doc: Any, source: str | Path, **settings: Any) -> RunConfig:
    """A run folder's settings document as a resume reads it: the document's checks, one epoch
    count spread over the stages, ``settings`` set, then the assembled RunConfig's checks; the
    errors name ``source``.  The fork puts a new folder's settings through it before writing."""
    doc = check.check_config_document(doc, source)
    if isinstance(doc.get("epochs"), int):
        doc["epochs"] = {t: doc["epochs"] for t in doc.get("order", [])}
    cfg = RunConfig.from_dict(doc)
    for name, value in settings.items():
        setattr(cfg, name, value)
    check.check_run_config(cfg, where=lambda name: f"{source}: '{name}'")
    return cfg


def check_data_before_run(cfg) -> None:
    """The data of every stage checked (headers, masks, annotation JSON) before any folder is made;
    boxes the readers drop are said on stderr."""
    from benchmarks import resolve_data_root
    from benchmarks.check import check_data, dropped_box_notes

    root = resolve_data_root(cfg.data_root, cfg.seed)
    report = check_data(root.path, cfg.order, splits=("train", "val"), max_images=cfg.max_images)
    for note in dropped_box_notes(report):
        print(f"warning: {note}", file=sys.stderr)


def run_in_new_folder(cfg, run, clear: bool = False):
    """``run(cfg)`` into a new (or, with ``clear``, emptied) folder; a run that fails before any
    epoch finished (no resume state) leaves nothing behind."""
    from avalanche_onehead.errors import OneHeadError
    from avalanche_onehead.run_folder import RunFolder
    from benchmarks import DatasetError

    out = Path(cfg.out)
    existed = out.is_dir()
    if clear and existed:
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    try:
        return run(cfg)
    except (DatasetError, OneHeadError, ValueError, OSError):
        if out.is_dir() and not RunFolder(out).has_saved_state():  # no finished epoch or stage to resume from
            if existed:
                for entry in out.iterdir():
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def make_config(args: argparse.Namespace) -> RunConfig:
    """The run's settings from parsed flags (see :func:`run_settings`)."""
    return run_settings(setting_flags(args), args.config, args.tasks)


def epochs_layer(epochs: dict[str, int], value: int | dict[str, int]) -> dict[str, int]:
    """``epochs`` with ``value`` on top: N for every stage, or per task (tasks of other runs ignored)."""
    if isinstance(value, int):
        return {t: value for t in epochs}
    return {t: int(value.get(t, n)) for t, n in epochs.items()}


def run_settings(flags: dict[str, Any], config: str | Path | None = None, tasks: str | None = None) -> RunConfig:
    """The one merge of a new run's settings: RunConfig's defaults < the recipe (``config``, else
    the default recipe) < ``flags`` (the settings given on the command line: RunConfig fields,
    and remedy options as ``remedy_<field>``, which update the recipe's remedy options).

    Besides: ``tasks`` keeps only those tasks of the order; ``--joint`` without ``--strategy``
    trains no remedy; on the synthetic benchmark without ``config`` the recipe runs as a smoke
    test (:data:`SMOKE_IMAGE_SIZE`, :data:`SMOKE_EPOCHS`), which flags still override.  Every
    value is checked; an error names the flag, or the file and the field, it came from."""
    from benchmarks import is_synthetic

    path = Path(config) if config else DEFAULT_CONFIG
    recipe = read_recipe(path) if config or DEFAULT_CONFIG.is_file() else {}
    remedy_flags = {k.removeprefix(REMEDY): v for k, v in flags.items() if k.startswith(REMEDY)}
    run_flags = {k: v for k, v in flags.items() if not k.startswith(REMEDY)}
    replaced = {*run_flags, *(["remedy"] if remedy_flags else []), *(["order"] if tasks else [])}
    from_file = set(recipe) - replaced
    settings = {**recipe, **run_flags}
    if run_flags.get("joint") and "strategy" not in run_flags:
        settings["strategy"] = "naive"  # the recipe's remedies do not apply to joint training
        settings.pop("remedy", None)
    order = check.task_flag("--order", settings.get("order", defaults(RunConfig)["order"]))
    if tasks:
        chosen = check.task_flag("--tasks", tasks)
        order = [t for t in order if t in chosen] + [t for t in chosen if t not in order]
    settings["order"] = order
    try:
        settings["strategy"] = check.strategy(settings.get("strategy", defaults(RunConfig)["strategy"]))
    except ValueError as e:
        raise SettingError("--strategy" if "strategy" in run_flags else f"{path}: 'strategy'", str(e)) from None
    smoke = not config and is_synthetic(settings.get("data_root"))
    if smoke and "image_size" not in run_flags:
        settings["image_size"] = SMOKE_IMAGE_SIZE
    epochs = {t: DEFAULT_EPOCHS for t in order}
    if "epochs" in recipe:
        epochs = epochs_layer(epochs, recipe["epochs"])
    if smoke:
        epochs = epochs_layer(epochs, SMOKE_EPOCHS)
    if "epochs" in run_flags:
        stray = [t for t in run_flags["epochs"] if t not in order] if isinstance(run_flags["epochs"], dict) else []
        if stray:
            raise SettingError("--epochs", f"names task {stray[0]!r} that is not in the run ({', '.join(order)})")
        epochs = epochs_layer(epochs, run_flags["epochs"])
    settings["epochs"] = epochs
    settings["remedy"] = {**settings.get("remedy", {}), **remedy_flags}
    cfg = RunConfig.from_dict(settings)

    def where(name: str) -> str:  # a setting's origin: the file (unless a flag replaced it), or its flag
        if name in from_file:
            return f"{path}: '{name}'"
        return "--replay-mem/--replay-per-step" if name == "remedy" else f"--{name.replace('_', '-')}"

    check.check_run_config(cfg, where)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
