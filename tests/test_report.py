"""make_report.py: report.md is filled from run folders only, never by hand."""
from __future__ import annotations

import avalanche_onehead.commands.report
from avalanche_onehead import commands

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "64", "--epochs", "1", "--max-images", "6", "--batch-size", "2", "--workers", "0",
        "--no-pretrained", "--no-progress", "--device", "cpu"]

REMEDY_FOLDERS = ("naive", "ewc-l1e5", "lwf", "replay", "ewc+replay", "ewc+replay-l1e5", "lwf+replay", "lwf+ewc-l1e5")
OTHER_FOLDERS = ("cls5-s0",)
# what a stand-in copy of a run folder leaves out: the report reads metrics and resume.pt, no weights
CHECKPOINTS = shutil.ignore_patterns("model.pt", "stage*.pt", "resume_*.pt")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report_runs(tmp_path_factory, synthetic_root, run_cli):
    base = tmp_path_factory.mktemp("report")
    folders = {}
    for name, extra in (("s0", ["--strategy", "ewc+replay", "--seed", "0"]),
                        ("s1", ["--strategy", "ewc+replay", "--seed", "1"]),
                        ("joint", ["--joint", "--batch-size", "3"])):
        folders[name] = base / name
        assert run_cli.main([*TINY, *extra, "--data-root", str(synthetic_root), "--out", str(folders[name])]) == 0
    card = subprocess.run([sys.executable, "-m", "avalanche_onehead.compliance", "--weights",
                           str(folders["s0"] / "model.pt"), "--runs", "2", "--warmup", "1", "--size", "64"],
                          capture_output=True, text=True, cwd=REPO, check=True)
    (base / "compliance.json").write_text(card.stdout)
    # the shipped template names the remedy runs by folder: stand-ins copied from the seed-0 run
    remedies = [base / "remedies" / n for n in REMEDY_FOLDERS]
    others = [base / "others" / n for n in OTHER_FOLDERS]
    for r in remedies + others:  
        shutil.copytree(folders["s0"], r, ignore=CHECKPOINTS)
    manifest = {"default": [str(folders["s0"]), str(folders["s1"])], "remedies": [str(r) for r in remedies],
                "others": [str(r) for r in others], "earlier_default": [str(folders["s1"])],
                "single": {t: str(folders["s0"]) for t in ("seg", "det", "cls")}, "joint": str(folders["joint"]),
                "compliance": str(base / "compliance.json"), "release": str(folders["s0"] / "model.pt")}
    (base / "manifest.json").write_text(json.dumps(manifest))
    return SimpleNamespace(base=base, manifest=base / "manifest.json", **folders)


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_the_shipped_template_is_filled_from_the_runs(report_runs):
    report = commands.report
    out = report_runs.base / "report.md"
    assert report.main(["--manifest", str(report_runs.manifest), "--out", str(out)]) == 0
    text = out.read_text()
    assert "{{" not in text and "}}" not in text
    m0, m1 = _metrics(report_runs.s0), _metrics(report_runs.s1)
    for t in ("seg", "det", "cls"):
        mean = (m0["final"][t] + m1["final"][t]) / 2
        assert f"{mean:.3f} ± " in text  # the seeds' mean, computed, not typed
    assert f"{_metrics(report_runs.joint)['final']['seg']:.3f}" in text
    assert f"{m0['params']:,}" in text
    for fig in ("matrix_default.png", "stage_curves.png", "remedies.png", "qualitative.png"):
        assert (report_runs.base / "report" / fig).stat().st_size > 5000, fig
        assert f"](report/{fig})" in text


def test_a_placeholder_no_run_provides_is_an_error(report_runs, tmp_path, capsys):
    report = commands.report
    template = tmp_path / "t.md"
    template.write_text("final seg {{default.final.seg}}; invented {{default.final.magic}}\n")
    out = tmp_path / "r.md"
    with pytest.raises(SystemExit) as e:
        report.main(["--manifest", str(report_runs.manifest), "--template", str(template), "--out", str(out),
                     "--no-figures"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "default.final.magic" in err[0]
    assert not out.exists()


def test_seed_statistics_and_drops(report_runs, tmp_path):
    report = commands.report
    template = tmp_path / "t.md"
    template.write_text("{{default.final.cls}}|{{default.drop.seg}}|{{single.det}}\n")
    out = tmp_path / "r.md"
    assert report.main(["--manifest", str(report_runs.manifest), "--template", str(template), "--out", str(out),
                        "--no-figures"]) == 0
    cls, drop, single = out.read_text().strip().split("|")
    finals = [_metrics(f)["final"]["cls"] for f in (report_runs.s0, report_runs.s1)]
    mean, std = sum(finals) / 2, abs(finals[0] - finals[1]) / 2 ** 0.5
    assert cls == f"{mean:.3f} ± {std:.3f}"
    drops = [_metrics(f)["drop_pct"]["seg"] for f in (report_runs.s0, report_runs.s1)]
    assert drop.startswith(f"{sum(drops) / 2:.1f} ± ")
    assert single == f"{_metrics(report_runs.s0)['baseline']['det']:.3f}"


def test_a_manifest_without_runs_is_one_error_line(tmp_path, capsys):
    report = commands.report
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"remedies": ["x"]}))
    with pytest.raises(SystemExit) as e:
        report.main(["--manifest", str(manifest), "--out", str(tmp_path / "r.md"), "--no-figures"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.json" in err[0] and "default" in err[0] and "single" in err[0]
    assert not (tmp_path / "r.md").exists()


def test_single_task_runs_are_matched_by_epochs_and_an_earlier_schedule_is_tabled(report_runs, tmp_path):
    report = commands.report
    longer = tmp_path / "single-cls-longer"  # a stand-in single-task run trained for 3 cls epochs
    shutil.copytree(report_runs.s1, longer, ignore=CHECKPOINTS)
    m = _metrics(longer)
    m["epochs"] = {**m["epochs"], "cls": 3}
    m["baseline"]["cls"] = 0.123
    (longer / "metrics.json").write_text(json.dumps(m))
    manifest = json.loads(report_runs.manifest.read_text())
    manifest["single"]["cls"] = [str(longer), str(report_runs.s0)]
    manifest["earlier_default"] = [str(report_runs.s1)]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    template = tmp_path / "t.md"
    template.write_text("{{single.cls}}|{{earlier.final.seg}}|{{default.epochs.cls}}\n\n{{table.earlier}}\n")
    out = tmp_path / "r.md"
    assert report.main(["--manifest", str(tmp_path / "m.json"), "--template", str(template), "--out", str(out),
                        "--no-figures"]) == 0
    head, table = out.read_text().split("\n\n", 1)
    single, earlier, epochs = head.strip().split("|")
    # the default ran cls for 1 epoch: the 1-epoch single-task run is its baseline, not the 3-epoch one
    assert single == f"{_metrics(report_runs.s0)['baseline']['cls']:.3f}" and epochs == "1"
    assert earlier == f"{_metrics(report_runs.s1)['final']['seg']:.3f} ± 0.000"
    assert table.count("\n| ") == 2 and "(1 seeds)" in table and "(2 seeds)" in table
