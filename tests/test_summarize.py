"""experiments/summarize.py: the seeds table and report/results.json computed from run folders."""
from __future__ import annotations

import avalanche_onehead.commands.summarize
from avalanche_onehead import commands

import json

import pytest


def _run(tmp_path, name: str, seed: int, final_seg: float, drop: float):
    d = tmp_path / name
    d.mkdir()
    m = {"tasks": ["seg", "cls"], "metric_names": {"seg": "mIoU", "cls": "Top-1"}, "strategy": "lwf", "seed": seed,
         "matrix": [[0.5, 0.1], [final_seg, 0.9]], "baseline": {"seg": 0.5, "cls": 0.9},
         "final": {"seg": final_seg, "cls": 0.9}, "drop_pct": {"seg": drop, "cls": 0.0},
         "train_seconds": 600.0 + seed}
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def test_seed_summary_means_stds_and_worst_drop(tmp_path, capsys):
    runs = [_run(tmp_path, f"s{i}", i, f, dr) for i, (f, dr) in enumerate([(0.48, 4.0), (0.46, 8.0), (0.50, 0.0)])]
    out = tmp_path / "report" / "results.json"
    md = tmp_path / "report" / "seeds.md"
    assert commands.summarize.main([*map(str, runs), "--json", str(out),
                                                         "--markdown", str(md)]) == 0
    s = json.loads(out.read_text())
    assert [r["seed"] for r in s["seeds"]] == [0, 1, 2]
    assert s["mean"]["final"]["seg"] == pytest.approx(0.48)
    assert s["std"]["final"]["seg"] == pytest.approx(0.02)
    assert s["mean"]["matrix"][1][0] == pytest.approx(0.48)
    assert s["worst_drop_pct"]["seg"] == 8.0
    table = md.read_text()
    assert "NOT every seed within the 5 % bar" in table and "0.480 ± 0.020" in table
    assert table in capsys.readouterr().out
    doc = tmp_path / "report.md"
    doc.write_text("intro\n<!-- seeds:begin -->\nold table\n<!-- seeds:end -->\nrest\n")
    assert commands.summarize.main([*map(str, runs), "--into", str(doc)]) == 0
    assert doc.read_text() == f"intro\n<!-- seeds:begin -->\n{table}<!-- seeds:end -->\nrest\n"
    bad = tmp_path / "plain.md"
    bad.write_text("no markers\n")
    with pytest.raises(SystemExit):
        commands.summarize.main([*map(str, runs), "--into", str(bad)])
    assert bad.read_text() == "no markers\n"


def test_a_folder_without_metrics_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        commands.summarize.main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json" in err[0]
