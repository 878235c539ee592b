"""Compare forgetting remedies on the same seed and data: a markdown table and a plot.

    python experiments/compare.py --strategies naive,ewc,lwf,replay,ewc+replay --data-root data
    python experiments/compare.py --strategies naive,ewc --out runs/cmp -- --epochs 2 --max-images 16
    python experiments/compare.py --runs runs/naive-real runs/ewc-real     # collect existing runs

Options that are not compare.py's own (like --data-root above), and everything after
'--', go to experiments/run.py for every strategy.  Each strategy trains into
OUT/<strategy>/ (all TensorBoard logs under OUT, so ``tensorboard --logdir OUT``
overlays them); a strategy whose folder already holds metrics.json is collected, not
retrained, and a killed one is resumed.  Writes OUT/comparison.md, OUT/comparison.json
and OUT/comparison.png (OUT: --out, default runs/compare-<timestamp>).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any



def load_run(folder: Path) -> dict:
    """A finished run's metrics (checked), its folder and its label (strategy and remedy options)."""
    from avalanche_onehead.run_folder import RunFolder
    from avalanche_onehead.validation import check_metrics_document

    run = RunFolder(folder)
    if not run.is_finished():
        raise FileNotFoundError(f"{folder}: no {RunFolder.METRICS} (not a finished run folder)")
    m = check_metrics_document(run.read_metrics(), run.metrics_file)
    m["folder"] = str(folder)
    remedy = run.read_config().get("remedy", {})
    m["label"] = label(m["strategy"], remedy if isinstance(remedy, dict) else {})
    return m


def label(strategy: str, remedy: dict[str, Any]) -> str:
    """``ewc+replay (ewc_lambda 1e+05)``: the strategy and its non-default remedy options."""
    from strategies import options_of

    try:
        own = set(options_of(strategy))  # the remedy registry says which options each remedy reads
    except ValueError:  # "joint": no remedy
        own = set()
    opts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(remedy.items()) if k in own]
    return strategy + (f" ({', '.join(opts)})" if opts else "")


def later_stages(r: dict) -> float:
    """Training seconds after the first stage, where the remedies act (stage 1 is the
    same computation for every strategy)."""
    return sum(r["stage_seconds"].get(t, 0.0) for t in r["tasks"][1:])


def table(runs: list[dict]) -> str:
    """Markdown: final metric and relative drop per task, BWT, average, train time, overhead."""
    tasks = runs[0]["tasks"]
    names = runs[0]["metric_names"]
    naive = next((r for r in runs if r["strategy"] == "naive"), None)
    head = ["strategy"] + [f"{t} {names[t]} (drop %)" for t in tasks] + \
           ["BWT", "avg", "train min", "stages 2+ time × naive"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [f"`{r.get('label', r['strategy'])}`"]
        cells += [f"{r['final'][t]:.3f} ({r['drop_pct'][t]:+.1f})" for t in tasks]
        cells.append(f"{r.get('BWT', 0.0):+.3f}")
        cells.append(f"{r.get('AvgMetric', sum(r['final'].values()) / len(tasks)):.3f}")
        cells.append(f"{r['train_seconds'] / 60:.1f}")
        cells.append(f"{later_stages(r) / later_stages(naive):.2f}" if naive and later_stages(naive) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    base = "; ".join(f"{t}: " + ", ".join(f"{r.get('label', r['strategy'])} {r['baseline'][t]:.3f}" for r in runs)
                     for t in tasks)
    return "\n".join(lines) + f"\n\nBaselines (diagonal): {base}\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    from avalanche_onehead import rules

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = runs[0]["tasks"]
    names = runs[0]["metric_names"]
    x = np.arange(len(tasks))
    w = 0.8 / len(runs)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in enumerate(runs):
        name = r.get("label", r["strategy"])
        ax.bar(x + k * w, [r["final"][t] for t in tasks], w, label=name)
        bx.bar(x + k * w, [r["drop_pct"][t] for t in tasks], w, label=name)
    for a, title in ((ax, "final metric (val)"), (bx, "drop vs own baseline (%)")):
        a.set_xticks(x + 0.4 - w / 2, [f"{t} {names[t]}" for t in tasks])
        a.set_title(title)
    bx.axhline(rules.DROP_BAR_PCT, color="k", ls="--", lw=1)
    bx.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """compare.py's own arguments, and run.py's: everything after the first '--' goes to run.py."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv=None) -> int:
    from avalanche_onehead.cli import OneLineParser

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      allow_abbrev=False)  # run.py's --strategy must not pass for --strategies
    p.add_argument("--strategies", default="naive,ewc,lwf,replay,ewc+replay",
                   help="comma list of strategies to train or collect (default %(default)s)")
    p.add_argument("--runs", nargs="*", default=None, help="collect these finished run folders instead")
    p.add_argument("--out", default=None, help="comparison folder (default runs/compare-<timestamp>)")
    ours, after = split_arguments(list(sys.argv[1:] if argv is None else argv))
    p.usage = p.format_usage().removeprefix("usage: ").rstrip() + " [RUN.PY OPTIONS] [-- RUN.PY OPTIONS]"
    args, extra = p.parse_known_args(ours)
    run_args = extra + after
    from avalanche_onehead.cli import fail

    with fail():
        for flag in ("--strategy", "--out", "--resume"):
            if any(a == flag or a.startswith(flag + "=") for a in run_args):
                raise ValueError(f"{flag}: compare.py sets it for each strategy's run.py; "
                                 "use compare.py's --strategies / --out")
        out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
        new_folders = [d for d in (out, *out.parents) if not d.exists()]
        try:
            md = compare(args, out, run_args)
        except BaseException:
            for d in new_folders:  # deepest first; a folder with anything in it (a resumable run) stays
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise
    print(md)
    print(f"written: {out / 'comparison.md'}, {out / 'comparison.png'}")
    return 0


def check_strategies(spec: str, run_args: list[str]) -> list[str]:
    """The strategies of ``--strategies``, each a valid and distinct name, and the run options
    valid for every one of them: a typo fails here, not after hours of training."""
    from . import run as run_cli

    from avalanche_onehead.validation import SettingError
    from strategies import canonical

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise SettingError("--strategies", f"names no strategy ({spec!r})")
    seen: dict[str, str] = {}
    for name in names:
        try:
            key = canonical(name)
        except ValueError as e:
            raise SettingError("--strategies", str(e)) from None
        if key in seen:
            raise SettingError("--strategies", f"{seen[key]!r} and {name!r} are the same strategy")
        seen[key] = name
        run_cli.make_config(run_cli.parse_args(["--strategy", name, *run_args]))
    return names


def compare(args: argparse.Namespace, out: Path, run_args: list[str]) -> str:
    """Collect or train the runs, then write the table, the JSON and the plot into ``out``."""
    if args.runs is not None:
        if not args.runs:
            raise ValueError("--runs: give at least one run folder")
        runs = [load_run(Path(f)) for f in args.runs]
        out.mkdir(parents=True, exist_ok=True)
    else:
        strategies = check_strategies(args.strategies, run_args)  # all of them, before training any
        out.mkdir(parents=True, exist_ok=True)
        runs = [train_or_collect(s, out, run_args) for s in strategies]
    if len({tuple(r["tasks"]) for r in runs}) != 1:
        raise ValueError("the runs do not share the same task order; compare like with like")
    md = table(runs)
    (out / "comparison.md").write_text(md)
    (out / "comparison.json").write_text(json.dumps(runs, indent=2))
    plot(runs, out / "comparison.png")
    return md


def train_or_collect(strategy: str, out: Path, run_args: list[str]) -> dict:
    from . import run as run_cli

    from avalanche_onehead.run_folder import RunFolder
    from strategies import canonical

    folder = out / canonical(strategy)
    run = RunFolder(folder)
    if run.is_finished():
        print(f"{strategy}: collected {folder}")
    elif run.can_resume():
        run_cli.main(["--resume", str(folder)])
    else:  # a run killed before its first epoch finished is started again
        again = ["--overwrite"] if run.is_run_folder() else []
        run_cli.main(["--strategy", strategy, "--out", str(folder), *again, *run_args])
    return load_run(folder)


if __name__ == "__main__":
    sys.exit(main())
