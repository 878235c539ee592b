"""Several seeds of one recipe summarised: per-seed rows, mean and standard deviation.

``python experiments/summarize.py RUN [RUN ...] --json report/results.json --markdown FILE``
writes what this module computes from the run folders' ``metrics.json``; every number in
the table comes from those files.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .errors import OneHeadError
from .run_folder import RunFolder

SEED_KEYS = ("seed", "matrix", "baseline", "final", "drop_pct", "drop_abs", "train_seconds", "cache_seconds",
             "final_mAP50")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    folder = RunFolder(run_dir)
    m = folder.read_metrics()
    missing = [k for k in ("tasks", "matrix", "final", "baseline", "drop_pct", "train_seconds") if k not in m]
    if missing:
        raise OneHeadError(folder.metrics_file, f"lacks {', '.join(missing)}")
    return m


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def seed_summary(run_dirs: list[str | Path]) -> dict[str, Any]:
    """``{"seeds": [...], "mean": {...}, "std": {...}}`` over runs of one recipe (same tasks)."""
    runs = [read_metrics(d) for d in run_dirs]
    tasks = runs[0]["tasks"]
    if any(r["tasks"] != tasks for r in runs):
        raise OneHeadError(run_dirs[0], "the runs do not train the same tasks in the same order")
    seeds = [{"run": str(d), **{k: r.get(k) for k in SEED_KEYS}} for d, r in zip(run_dirs, runs)]
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in ("baseline", "final", "drop_pct", "drop_abs"):
        if all(key in r for r in runs):
            pairs = {t: _mean_std([float(r[key][t]) for r in runs]) for t in tasks}
            mean[key] = {t: p[0] for t, p in pairs.items()}
            std[key] = {t: p[1] for t, p in pairs.items()}
    for key in ("train_seconds", "final_mAP50"):
        if all(r.get(key) is not None for r in runs):
            mean[key], std[key] = _mean_std([float(r[key]) for r in runs])
    n = len(tasks)
    mean["matrix"] = [[statistics.fmean(r["matrix"][i][j] for r in runs) for j in range(n)] for i in range(n)]
    return {"tasks": tasks, "metric_names": runs[0].get("metric_names", {}), "strategy": runs[0].get("strategy"),
            "seeds": seeds, "mean": mean, "std": std,
            "worst_drop_pct": {t: max(float(r["drop_pct"][t]) for r in runs) for t in tasks}}


def summary_markdown(summary: dict[str, Any], drop_limit: float) -> str:
    """The seeds table of report.md and README.md."""
    tasks, names = summary["tasks"], summary["metric_names"]
    head = "| seed | " + " | ".join(f"{t} {names.get(t, '')} (drop %)" for t in tasks) + " | train min |"
    lines = [head, "|" + " --- |" * (len(tasks) + 2)]
    for s in summary["seeds"]:
        cells = [f"{s['final'][t]:.3f} ({s['drop_pct'][t]:.1f})" for t in tasks]
        lines.append(f"| {s['seed']} | " + " | ".join(cells) + f" | {s['train_seconds'] / 60:.1f} |")
    m, sd = summary["mean"], summary["std"]
    cells = [f"{m['final'][t]:.3f} ± {sd['final'][t]:.3f} ({m['drop_pct'][t]:.1f} ± {sd['drop_pct'][t]:.1f})"
             for t in tasks]
    lines.append("| mean ± std | " + " | ".join(cells) +
                 f" | {m['train_seconds'] / 60:.1f} ± {sd['train_seconds'] / 60:.1f} |")
    worst = summary["worst_drop_pct"]
    ok = all(v <= drop_limit for v in worst.values())
    lines.append("")
    lines.append(f"Worst seed's drop: " + ", ".join(f"{t} {worst[t]:.1f} %" for t in tasks) +
                 f" ({'every seed within' if ok else 'NOT every seed within'} the {drop_limit:g} % bar).")
    return "\n".join(lines) + "\n"
