"""Build report.md and its figures from run folders, so no number in it is typed by hand.

    python experiments/make_report.py                  # experiments/report_runs.json -> report.md + report/
    python experiments/make_report.py --manifest M.json --template T.md --out report.md --figures report

The manifest names the run folders (see experiments/report_runs.json):
``default`` (the default recipe, one folder per seed), ``remedies`` (one folder per
strategy, same seed and settings), ``single`` (task -> a run, or a list of runs with
different epochs, whose diagonal holds that task trained alone from the ImageNet
initialisation; each run is compared with the one trained for as many epochs),
``earlier_default`` (optional: the same seeds with an earlier recipe), ``others``
(optional: more runs the text quotes by folder name, in no table), ``joint`` (the joint-training
upper bound), ``compliance`` (the JSON printed by ``python -m avalanche_onehead.compliance``)
and ``release`` (the committed checkpoint).  Relative paths are read from the current folder (run it from the
repository root).  The template's ``{{key}}`` placeholders are
filled from these runs; an unknown key is an error, never a blank.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compare
from .compare import later_stages

from avalanche_onehead import rules
from avalanche_onehead.compliance import ORIGINAL_SIZE
from avalanche_onehead.run_folder import RunFolder
from avalanche_onehead.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]  # the repository


def load_run(folder: str | Path) -> dict[str, Any]:
    """compare.py's run record plus its settings, fork source and template key."""
    run = RunFolder(folder)
    m = compare.load_run(run.path)
    m["config"] = run.read_config()
    m["forked_from"] = run.read_forked_from()
    m["key"] = run.path.name  # template keys: {{<folder name>.final.seg}}
    return m


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], digits: int = 3) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def rel_drop(base: float, final: float) -> float:
    return 100.0 * (base - final) / base if base > 0 else 0.0


@dataclass
class ReportRuns:
    """The manifest's run records (``load_run``), and what the tables share."""

    default: list[dict]
    remedies: list[dict]
    singles: dict[str, list[dict]]
    earlier: list[dict]
    others: list[dict]
    joint: dict | None
    compliance: dict | None
    release: Path | None
    data_root: str | None
    tasks: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    single: dict[str, dict] = field(default_factory=dict)  # per task: the single-task run of the default's epochs
    single_value: dict[str, float] = field(default_factory=dict)


def collect_runs(manifest: dict[str, Any]) -> ReportRuns:
    """The run folders the manifest names, read and checked to share one task order."""
    comp = Path(manifest["compliance"]) if manifest.get("compliance") else None
    runs = ReportRuns(
        default=[load_run(p) for p in manifest["default"]],
        remedies=[load_run(p) for p in manifest["remedies"]],
        singles={t: [load_run(p) for p in ([ps] if isinstance(ps, str) else ps)] for t, ps in manifest["single"].items()},
        earlier=[load_run(p) for p in manifest.get("earlier_default", [])],
        others=[load_run(p) for p in manifest.get("others", [])],
        joint=load_run(manifest["joint"]) if manifest.get("joint") else None,
        compliance=json.loads(comp.read_text()) if comp and comp.is_file() else None,
        release=Path(manifest["release"]) if manifest.get("release") else None,
        data_root=manifest.get("data_root"))
    d0 = runs.default[0]
    runs.tasks, runs.names = d0["tasks"], d0["metric_names"]
    for r in runs.default + runs.remedies + runs.earlier:
        if r["tasks"] != runs.tasks:
            raise ValueError(f"{r['folder']}: task order {r['tasks']} differs from {runs.tasks}")
    runs.single = {t: single_for(runs, d0, t) for t in runs.tasks}
    runs.single_value = {t: runs.single[t]["baseline"][t] for t in runs.tasks}
    return runs


def single_for(runs: ReportRuns, r: dict, t: str) -> dict:
    """The single-task run of ``t`` trained for as many epochs as ``r`` trained it
    (else the first one listed)."""
    runs = runs.singles[t]
    return next((s for s in runs if s["epochs"].get(t) == r["epochs"].get(t)), runs[0])


def cell(runs: ReportRuns, r: dict, t: str) -> str:
    """final (relative / absolute drop vs diagonal); relative drop vs single-task."""
    f, b = r["final"][t], r["baseline"][t]
    single = single_for(runs, r, t)["baseline"][t]
    return f"{f:.3f} ({rel_drop(b, f):+.1f} % / {b - f:+.3f}); {rel_drop(single, f):+.1f} % vs single"


def table_remedies(runs: ReportRuns) -> str:
    naive = next((r for r in runs.remedies if r["strategy"] == "naive"), None)
    head = ["strategy"] + [f"{t} {runs.names[t]}" for t in runs.tasks] + \
           ["BWT", "avg", "train min", "stages 2–3 time × naive"]
    rows = []
    for r in runs.remedies:
        cells = [f"`{r['label']}`"] + [cell(runs, r, t) for t in runs.tasks]
        cells += [f"{r.get('BWT', 0.0):+.3f}", f"{statistics.fmean(r['final'].values()):.3f}",
                  f"{r['train_seconds'] / 60:.1f}",
                  f"{later_stages(r) / later_stages(naive):.2f}" if naive else "n/a"]
        rows.append(cells)
    return md_table(head, rows)


def table_references(runs: ReportRuns) -> str:
    head = ["reference"] + [f"{t} {runs.names[t]}" for t in runs.tasks] + ["what it is"]
    rows = [["single-task"] + [f"{runs.single_value[t]:.3f}" for t in runs.tasks]
            + ["each task trained alone from the ImageNet initialisation"]]
    for r in runs.remedies:
        if r["strategy"] == "naive":
            rows.append(["naive sequential"] + [f"{r['final'][t]:.3f}" for t in runs.tasks]
                        + ["lower bound: fine-tuning seg → det → cls, no remedy"])
    finals = {t: [r["final"][t] for r in runs.default] for t in runs.tasks}
    rows.append([f"default `{runs.default[0]['label']}` ({len(runs.default)} seeds)"]
                + [pm(finals[t]) for t in runs.tasks] + ["the shipped recipe, mean ± std"])
    if runs.joint:
        rows.append(["joint (NOT allowed)"] + [f"{runs.joint['final'][t]:.3f}" for t in runs.tasks]
                    + ["upper bound: all three tasks trained together"])
    return md_table(head, rows)


def table_seeds(runs: ReportRuns) -> str:
    head = ["seed"] + [f"{t} {runs.names[t]}" for t in runs.tasks] + \
           [f"{t} drop %" for t in runs.tasks] + ["BWT", "train min"]
    rows = []
    for r in runs.default:
        rows.append([str(r["seed"])] + [f"{r['final'][t]:.3f}" for t in runs.tasks]
                    + [f"{r['drop_pct'][t]:+.1f}" for t in runs.tasks]
                    + [f"{r.get('BWT', 0.0):+.3f}", f"{r['train_seconds'] / 60:.1f}"])
    col = lambda f: [f(r) for r in runs.default]
    rows.append(["**mean ± std**"] + [pm(col(lambda r, t=t: r["final"][t])) for t in runs.tasks]
                + [pm(col(lambda r, t=t: r["drop_pct"][t]), 1) for t in runs.tasks]
                + [pm(col(lambda r: r.get("BWT", 0.0))), pm(col(lambda r: r["train_seconds"] / 60), 1)])
    return md_table(head, rows)


def table_drops(runs: ReportRuns) -> str:
    """Relative and absolute drops of the default recipe, against both baselines."""
    head = ["task", "diagonal baseline", "single-task baseline", "final",
            "drop vs diagonal (rel. / abs.)", "drop vs single-task (rel. / abs.)"]
    rows = []
    for t in runs.tasks:
        base = [r["baseline"][t] for r in runs.default]
        fin = [r["final"][t] for r in runs.default]
        s = runs.single_value[t]
        rows.append([f"{t} {runs.names[t]}", pm(base), f"{s:.3f}", pm(fin),
                     f"{pm([rel_drop(b, f) for b, f in zip(base, fin)], 1)} % / {pm([b - f for b, f in zip(base, fin)])}",
                     f"{pm([rel_drop(s, f) for f in fin], 1)} % / {pm([s - f for f in fin])}"])
    return md_table(head, rows)


def table_targets(runs: ReportRuns) -> str:
    head = ["target", "bar", "measured", "met?"]
    rows = []
    for t in runs.tasks:
        fin = [r["final"][t] for r in runs.default]
        bar = TASKS[t].quality_bar  # DESIGN's quality bar (val, after the whole sequence)
        rows.append([f"{t} {runs.names[t]} after the sequence", f"≥ {bar:.2f}", pm(fin),
                     yes(statistics.fmean(fin) >= bar)])
    for t in runs.tasks:
        drops = [r["drop_pct"][t] for r in runs.default]
        rows.append([f"{t} drop vs its baseline", f"≤ {rules.DROP_BAR_PCT:g} %", f"{pm(drops, 1)} %",
                     yes(rules.within_drop_bar(statistics.fmean(drops)))])
    params, limit = runs.default[0]["params"], rules.PROJECT_PARAM_LIMIT
    rows.append(["parameters", f"≤ {limit / 1e6:g} M", f"{params / 1e6:.2f} M", yes(params <= limit)])
    if runs.compliance and runs.compliance.get("latency"):
        ms = runs.compliance["latency"]["median_ms"]
        rows.append(["latency 512², batch 1, with post-processing, CPU", f"≤ {rules.LATENCY_BAR_MS:g} ms",
                     f"{ms:.0f} ms", yes(ms <= rules.LATENCY_BAR_MS)])
    mins = [r["train_seconds"] / 60 for r in runs.default]
    rows.append(["default training time on the CPU", f"≤ {rules.TRAIN_BUDGET_MIN:g} min", f"{pm(mins, 1)} min",
                 yes(statistics.fmean(mins) <= rules.TRAIN_BUDGET_MIN)])
    return md_table(head, rows)


def table_schedule(runs: ReportRuns) -> str:
    cfg = runs.default[0]["config"]
    rem = cfg.get("remedy", {})
    rows = [["order", " → ".join(runs.tasks)],
            ["epochs per stage", ", ".join(f"{t} {cfg['epochs'][t]}" for t in runs.tasks)],
            ["image size", f"{cfg['image_size']} px (train and eval)"],
            ["batch", str(cfg["batch_size"])],
            ["optimizer", (f"AdamW, lr {cfg['lr']:g} (backbone × {cfg['backbone_lr_mult']:g}), "
                           f"weight decay {cfg['weight_decay']:g} (none on biases and the output layer)")],
            ["schedule", "per stage: linear warm-up, then cosine decay"],
            ["strategy", f"`{cfg['strategy']}`"],
            ["remedy options", ", ".join(f"{k} {v}" for k, v in rem.items()) or "defaults"],
            ["model options", ", ".join(f"{k} {v}" for k, v in cfg.get("model", {}).items()) or "defaults"]]
    return md_table(["setting", "value"], rows)


def table_earlier(runs: ReportRuns) -> str:
    """The default recipe next to the same seeds with the earlier recipe."""
    if not runs.earlier:
        return "(no earlier recipe in the manifest)"
    head = ["recipe", "epochs"] + [f"{t} {runs.names[t]}" for t in runs.tasks] + \
           [f"{t} drop %" for t in runs.tasks[:-1]] + ["train min"]
    rows = []
    for name, group in (("earlier", runs.earlier), ("default", runs.default)):
        ep = group[0]["epochs"]
        rows.append([f"{name} `{group[0]['label']}` ({len(group)} seeds)", ", ".join(f"{t} {ep[t]}" for t in runs.tasks)]
                    + [pm([r["final"][t] for r in group]) for t in runs.tasks]
                    + [pm([r["drop_pct"][t] for r in group], 1) for t in runs.tasks[:-1]]
                    + [pm([r["train_seconds"] / 60 for r in group], 1)])
    return md_table(head, rows)


def table_stage_time(runs: ReportRuns) -> str:
    head = ["run"] + [f"{t} stage (s)" for t in runs.tasks] + ["total (min)"]
    rows = []
    for r in runs.default:
        rows.append([f"default seed {r['seed']}"] + [f"{r['stage_seconds'].get(t, 0):.0f}" for t in runs.tasks]
                    + [f"{r['train_seconds'] / 60:.1f}"])
    return md_table(head, rows)


def table_params(runs: ReportRuns) -> str:
    if not runs.compliance:
        return "(no compliance JSON in the manifest)"
    p = runs.compliance["params"]
    rows = [[k, f"{p[k]:,}"] for k in ("backbone", "neck", "head", "total")]
    return md_table(["part", "parameters"], rows)


def report_values(runs: ReportRuns) -> dict[str, str]:
    """Every ``{{key}}`` the runs provide besides the tables and figures."""
    v = {**default_values(runs), **earlier_values(runs), **run_values(runs), **joint_values(runs),
         **compliance_values(runs.compliance), **ewc_diagnostics(runs), **rule_values()}
    if runs.release:
        v["release.path"] = f"`{runs.release}`"
        v.update(release_values(runs))
    return v


def default_values(runs: ReportRuns) -> dict[str, str]:
    """The default recipe's seeds (mean ± std), its single-task references and its model size."""
    d = runs.default
    v = {"default.strategy": f"`{d[0]['label']}`", "default.seeds": ", ".join(str(r["seed"]) for r in d),
         "default.n_seeds": str(len(d)), "default.folders": ", ".join(f"`{r['folder']}`" for r in d),
         "default.train_min": pm([r["train_seconds"] / 60 for r in d], 1),
         "params.total": f"{d[0]['params']:,}", "params.millions": f"{d[0]['params'] / 1e6:.2f}"}
    for t in runs.tasks:
        v[f"default.epochs.{t}"] = str(d[0]["epochs"][t])
        v[f"default.final.{t}"] = pm([r["final"][t] for r in d])
        v[f"default.drop.{t}"] = pm([r["drop_pct"][t] for r in d], 1)
        v[f"default.baseline.{t}"] = pm([r["baseline"][t] for r in d])
        v[f"single.{t}"] = f"{runs.single_value[t]:.3f}"
        v[f"single.{t}.folder"] = f"`{runs.single[t]['folder']}`"
    if "final_mAP50" in d[0]:
        v["default.final.mAP50"] = pm([r["final_mAP50"] for r in d])
    return v


def earlier_values(runs: ReportRuns) -> dict[str, str]:
    """The earlier recipe's seeds, or placeholders saying it was not run."""
    e = runs.earlier
    v = {"earlier.strategy": f"`{e[0]['label']}`" if e else "(not run)",
         "earlier.train_min": pm([r["train_seconds"] / 60 for r in e], 1) if e else "–"}
    for t in runs.tasks:
        v[f"earlier.final.{t}"] = pm([r["final"][t] for r in e]) if e else "(not run)"
        v[f"earlier.drop.{t}"] = pm([r["drop_pct"][t] for r in e], 1) if e else "(not run)"
        v[f"earlier.epochs.{t}"] = str(e[0]["epochs"][t]) if e else "–"
    return v


def run_values(runs: ReportRuns) -> dict[str, str]:
    """Each remedy and other run by its folder name (``{{<folder>.final.seg}}``), and the forks."""
    v: dict[str, str] = {}
    for r in runs.remedies + runs.others:
        v[f"{r['key']}.folder"] = f"`{r['folder']}`"
        v[f"{r['key']}.train_min"] = f"{r['train_seconds'] / 60:.1f}"
        for t in runs.tasks:
            v[f"{r['key']}.final.{t}"] = f"{r['final'][t]:.3f}"
            v[f"{r['key']}.drop.{t}"] = f"{r['drop_pct'][t]:.1f}"
            v[f"{r['key']}.epochs.{t}"] = str(r["epochs"][t])
            v[f"{r['key']}.baseline.{t}"] = f"{r['baseline'][t]:.3f}"
    v["remedies.folders"] = ", ".join(f"`{r['folder']}`" for r in runs.remedies)
    forks = [f"`{r['label']}` from `{r['forked_from']['source']}` after stage {r['forked_from'].get('stage', 1)}"
             for r in runs.remedies if r["forked_from"]]
    v["remedies.forks"] = "; ".join(forks) if forks else "none"
    return v


def joint_values(runs: ReportRuns) -> dict[str, str]:
    """The joint-training upper bound, or placeholders saying it was not run."""
    j = runs.joint
    v = {f"joint.final.{t}": f"{j['final'][t]:.3f}" if j else "(not run)" for t in runs.tasks}
    if not j:
        return {**v, "joint.folder": "(not run)", "joint.epochs": "–", "joint.train_min": "–"}
    return {**v, "joint.train_min": f"{j['train_seconds'] / 60:.1f}", "joint.folder": f"`{j['folder']}`",
            "joint.epochs": str(round(sum(j["epochs"].values()) / len(runs.tasks)))}


def compliance_values(compliance: dict | None) -> dict[str, str]:
    """The compliance card's head, parameters and latency."""
    if not compliance:
        return {}
    head = compliance["head"]
    v = {"head.layers": str(head["layers"]), "head.channels": str(head["output_channels"])}
    v.update({f"head.group.{t}": f"{a}–{b - 1}" for t, (a, b) in head["output_groups"].items()})
    v.update({f"params.{part}": f"{compliance['params'][part]:,}" for part in ("backbone", "neck", "head")})
    lat = compliance.get("latency") or {}
    if not lat:
        return v
    net, slow = lat.get("network_median_ms"), lat.get("unfolded_median_ms")
    v.update({"latency.median_ms": f"{lat['median_ms']:.0f}", "latency.threads": str(lat["threads"]),
              "latency.runs": str(lat["runs"]), "latency.warmup": str(lat["warmup"]),
              "latency.min_ms": f"{lat['min_ms']:.0f}",
              "latency.network_ms": f"{net:.0f}" if net is not None else "not measured",
              "latency.decode_ms": f"{lat['median_ms'] - net:.0f}" if net is not None else "not measured",
              "latency.original_size": "×".join(str(n) for n in lat.get("original_size", ORIGINAL_SIZE)),
              "latency.unfolded_ms": f"{slow:.0f}" if slow is not None else "not measured"})
    return v


TABLES = {"table.remedies": table_remedies, "table.references": table_references, "table.seeds": table_seeds,
          "table.drops": table_drops, "table.targets": table_targets, "table.schedule": table_schedule,
          "table.stage_time": table_stage_time, "table.params": table_params, "table.earlier": table_earlier}


def release_values(runs: ReportRuns) -> dict[str, str]:
    import torch

    if not runs.release.is_file():
        return {}
    payload = torch.load(runs.release, map_location="cpu", weights_only=True)
    prov = payload.get("provenance", {})
    return {"release.command": f"`{prov.get('command', '')}`", "release.seed": str(prov.get("seed", "")),
            "release.commit": f"`{prov.get('commit', '')}`",
            "release.mb": f"{runs.release.stat().st_size / 2**20:.1f}"}


def ewc_diagnostics(runs: ReportRuns) -> dict[str, str]:
    """For runs with EWC: the penalty λ/2·Σ F (θ − θ*)² for task 1 at the end of stage 2,
    next to that stage's last epoch loss: is the penalty big enough to matter?"""
    out: dict[str, str] = {}
    for r in runs.remedies:
        run = RunFolder(r["folder"])
        if "ewc" not in r["strategy"].split("+") or not run.resume_file.is_file():
            continue
        state = run.read_state(run.resume_file)["remedies"]["ewc"]
        if "importances" not in state:  # newer run folders keep no Fisher tensors (recomputed on resume)
            out.update({f"{r['key']}.{k}": "n/a" for k in ("ewc_penalty", "ewc_lambda", "stage2_loss")})
            continue
        fisher, star = state["importances"][0], state["saved_params"][0]
        after = run.stage_weights(2, runs.tasks[1])
        lam = float(r["config"].get("remedy", {}).get("ewc_lambda", 1000.0))
        pen = lam / 2 * sum(float((fisher[k] * (after[k] - star[k]) ** 2).sum()) for k in fisher)
        loss = run.last_epoch_loss(runs.tasks[1])
        out[f"{r['key']}.ewc_penalty"] = f"{pen:.3g}"
        out[f"{r['key']}.ewc_lambda"] = f"{lam:g}"
        out[f"{r['key']}.stage2_loss"] = f"{loss:.3g}" if loss is not None else "n/a"
    return out


def figures(runs: ReportRuns, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    src = RunFolder(runs.default[0]["folder"]).matrix_figure
    if src.is_file():
        shutil.copy2(src, out / "matrix_default.png")
        figs["fig.matrix"] = "matrix_default.png"
    plot_stage_curves(runs, out / "stage_curves.png")
    figs["fig.curves"] = "stage_curves.png"
    compare.plot(runs.remedies, out / "remedies.png")
    figs["fig.remedies"] = "remedies.png"
    if runs.release and runs.release.is_file():
        from avalanche_onehead.figures import qualitative_grid

        qualitative_grid(runs.release, out / "qualitative.png", data_root=runs.data_root)
        figs["fig.qualitative"] = "qualitative.png"
    return {k: f"{out.name}/{v}" for k, v in figs.items()}


def plot_stage_curves(runs: ReportRuns, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs.tasks), figsize=(4.2 * len(runs.tasks), 3.6))
    stages = [f"after {t}" for t in runs.tasks]
    for j, (ax, t) in enumerate(zip(axes, runs.tasks)):
        for r in runs.remedies:
            ax.plot(stages, [row[j] for row in r["matrix"]], marker="o", label=r["label"])
        ax.axhline(runs.single_value[t], color="k", ls="--", lw=1, label="single-task")
        if runs.joint:
            ax.axhline(runs.joint["final"][t], color="grey", ls=":", lw=1.5, label="joint (not allowed)")
        ax.set_title(f"{t} {runs.names[t]} (val)")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rule_values() -> dict[str, str]:
    """The challenge's and the project's bars, as the template quotes them."""
    return {"rules.drop_pct": f"{rules.DROP_BAR_PCT:g}", "rules.replay_cap": str(rules.MAX_REPLAY_PER_TASK_PER_STEP),
            "rules.latency_ms": f"{rules.LATENCY_BAR_MS:g}", "rules.train_min": f"{rules.TRAIN_BUDGET_MIN:g}"}


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(template: str, values: dict[str, str]) -> str:
    missing = sorted({k for k in re.findall(r"\{\{\s*([\w.+-]+)\s*\}\}", template) if k not in values})
    if missing:
        raise ValueError(f"the template asks for values no run provides: {', '.join(missing)}")
    return re.sub(r"\{\{\s*([\w.+-]+)\s*\}\}", lambda m: values[m.group(1)], template)


def build(manifest_path: Path, template_path: Path, out: Path, figures_dir: Path, with_figures: bool = True) -> str:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{manifest_path}: not a readable JSON manifest ({e})") from None
    missing = [k for k in ("default", "remedies", "single") if not isinstance(manifest, dict) or not manifest.get(k)]
    if missing:
        raise ValueError(f"{manifest_path}: the manifest names no {', '.join(missing)} run folder(s)")
    runs = collect_runs(manifest)  # manifest paths are relative to where the command runs
    values = {**report_values(runs), **{key: table(runs) for key, table in TABLES.items()}}
    if with_figures:
        values.update(figures(runs, figures_dir))
    text = render(template_path.read_text(), values)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(ROOT / "experiments" / "report_runs.json"))
    p.add_argument("--template", default=str(ROOT / "experiments" / "report_template.md"))
    p.add_argument("--out", default=str(ROOT / "report.md"))
    p.add_argument("--figures", default=None, help="figure folder (default: report/ beside --out)")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)
    from avalanche_onehead.cli import fail

    out = Path(args.out)
    with fail():
        build(Path(args.manifest), Path(args.template), out, Path(args.figures or out.parent / "report"),
              with_figures=not args.no_figures)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
