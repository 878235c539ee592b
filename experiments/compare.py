#!/usr/bin/env python
"""Compare forgetting remedies on the same seed and data: a markdown table and a plot.

    python experiments/compare.py --strategies naive,ewc,lwf,replay,ewc+replay --data-root data
    python experiments/compare.py --runs runs/naive-real runs/ewc-real     # collect existing runs

Each strategy trains into OUT/<strategy>/ (all TensorBoard logs under OUT, so
``tensorboard --logdir OUT`` overlays them); a strategy whose folder already holds
metrics.json is collected, not retrained, and a killed one is resumed.
Writes OUT/comparison.md, OUT/comparison.json and OUT/comparison.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_run(folder: Path) -> dict:
    from avalanche_onehead.validation import check_metrics_document

    f = folder / "metrics.json"
    if not f.is_file():
        raise FileNotFoundError(f"{folder}: no metrics.json (not a finished run folder)")
    m = check_metrics_document(read_json(f), f)
    m["folder"] = str(folder)
    cfg = folder / "config.json"
    remedy = read_json(cfg).get("remedy", {}) if cfg.is_file() else {}
    m["label"] = label(m["strategy"], remedy if isinstance(remedy, dict) else {})
    return m


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({str(e)[:100]})") from None


def label(strategy: str, remedy: dict[str, Any]) -> str:
    """``ewc+replay (ewc_lambda 1e+05)``: the strategy and its non-default remedy options."""
    parts = strategy.split("+")
    opts = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(remedy.items())
            if k.split("_")[0] in parts]
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
    bx.axhline(5, color="k", ls="--", lw=1)
    bx.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from avalanche_onehead.cli import OneLineParser

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="naive,ewc,lwf,replay,ewc+replay")
    p.add_argument("--runs", nargs="*", default=None, help="collect these finished run folders instead")
    p.add_argument("--out", default=None, help="comparison folder (default runs/compare-<timestamp>)")
    p.add_argument("run_args", nargs=argparse.REMAINDER,
                   help="after '--': options passed to run.py for every strategy (e.g. -- --epochs 2)")
    args, extra = p.parse_known_args(argv)
    run_args = [a for a in (args.run_args + extra) if a != "--"]
    from avalanche_onehead.cli import fail

    with fail():
        out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.runs:
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
    print(md)
    print(f"written: {out / 'comparison.md'}, {out / 'comparison.png'}")
    return 0


def check_strategies(spec: str, run_args: list[str]) -> list[str]:
    """The strategies of ``--strategies``, each a valid and distinct name, and the run options
    valid for every one of them: a typo fails here, not after hours of training."""
    import run as run_cli  # experiments/run.py

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


def train_or_collect(strategy: str, out: Path, run_args: list[str]) -> dict:
    import run as run_cli  # experiments/run.py

    from strategies import canonical

    folder = out / canonical(strategy)
    if (folder / "metrics.json").is_file():
        print(f"{strategy}: collected {folder}")
    elif any((folder / f).is_file() for f in ("resume.pt", "resume_epoch.pt")):
        run_cli.main(["--resume", str(folder)])
    else:  # a run killed before its first epoch finished is started again
        again = ["--overwrite"] if (folder / "config.json").is_file() else []
        run_cli.main(["--strategy", strategy, "--out", str(folder), *again, *run_args])
    return load_run(folder)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
