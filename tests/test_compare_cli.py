"""compare.py's command line: its --help examples work, --out is honoured, failures leave no folder."""
from __future__ import annotations

import avalanche_onehead.commands.compare
from avalanche_onehead import commands

import json
from pathlib import Path

import pytest

METRICS = {"strategy": "", "seed": 0, "tasks": ["seg", "det", "cls"],
           "metric_names": {"seg": "mIoU", "det": "mAP", "cls": "Top-1"},
           "matrix": [[0.3, 0, 0], [0.2, 0.1, 0], [0.2, 0.1, 0.5]],
           "baseline": {"seg": 0.3, "det": 0.1, "cls": 0.5}, "final": {"seg": 0.2, "det": 0.1, "cls": 0.5},
           "drop_pct": {"seg": 33.3, "det": 0.0, "cls": 0.0}, "params": 3258030, "train_seconds": 60.0,
           "stage_seconds": {"seg": 20.0, "det": 20.0, "cls": 20.0}}


@pytest.fixture()
def compare(monkeypatch):
    """compare.py with training replaced by a stand-in that records run.py's arguments."""
    mod = commands.compare
    calls = []

    def fake_train(strategy, out, run_args):
        folder = out / strategy
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({**METRICS, "strategy": strategy}))
        calls.append((strategy, out, list(run_args)))
        return mod.load_run(folder)

    monkeypatch.setattr(mod, "train_or_collect", fake_train)
    mod.calls = calls
    return mod


def test_the_help_example_passes_run_options_through(compare, tmp_path, monkeypatch, capsys, synthetic_root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(synthetic_root)  # compare checks every run's settings before training
    assert compare.main(["--strategies", "naive,ewc,lwf,replay,ewc+replay", "--data-root", "data"]) == 0
    assert [c[0] for c in compare.calls] == ["naive", "ewc", "lwf", "replay", "ewc+replay"]
    assert all(c[2] == ["--data-root", "data"] for c in compare.calls)
    out = compare.calls[0][1]
    assert out.parent == Path("runs") and out.name.startswith("compare-") and (out / "comparison.md").is_file()


def test_out_is_honoured_and_options_after_the_separator_go_to_run(compare, tmp_path, monkeypatch,
                                                                    synthetic_root):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").symlink_to(synthetic_root)
    out = tmp_path / "cmp"
    assert compare.main(["--strategies", "naive,ewc", "--out", str(out), "--", "--epochs", "2",
                         "--data-root", "d"]) == 0
    assert {c[1] for c in compare.calls} == {out}
    assert compare.calls[0][2] == ["--epochs", "2", "--data-root", "d"]
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "comparison.png",
                                                      "ewc", "naive"]


@pytest.mark.parametrize("argv, flag", [(["--", "--out", "x"], "--out"), (["--strategy", "ewc"], "--strategy"),
                                        (["--", "--resume=r"], "--resume")])
def test_options_compare_sets_itself_are_refused(compare, tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        compare.main(["--strategies", "naive", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}")
    assert list(tmp_path.iterdir()) == [] and compare.calls == []


def test_a_failed_training_leaves_no_empty_comparison_folder(compare, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def fails(strategy, out, run_args):
        print("error: data: data root does not exist", file=__import__("sys").stderr)
        raise SystemExit(2)

    monkeypatch.setattr(compare, "train_or_collect", fails)
    with pytest.raises(SystemExit):
        compare.main(["--strategies", "naive", "--data-root", "data"])
    assert list(tmp_path.iterdir()) == []  # neither runs/compare-<timestamp>/ nor runs/


def test_collecting_a_missing_run_writes_nothing(compare, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "cmp")])
    assert not (tmp_path / "cmp").exists()
