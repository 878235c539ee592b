"""The released checkpoint: release.py, and eval.py reproducing the reported metrics."""
from __future__ import annotations

import avalanche_onehead.commands.evaluate
import avalanche_onehead.commands.release
from avalanche_onehead import commands

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RELEASED = REPO / "weights" / "onehead.pt"


def test_release_copies_the_model_and_the_metrics_eval_must_match(tmp_path, synthetic_root, run_cli, capsys):
    run = tmp_path / "run"
    assert run_cli.main(["--strategy", "naive", "--tasks", "cls", "--image-size", "64", "--epochs", "1",
                         "--max-images", "4", "--workers", "0", "--no-pretrained", "--no-progress", "--device", "cpu",
                         "--data-root", str(synthetic_root), "--out", str(run)]) == 0
    out = tmp_path / "w" / "one.pt"
    assert commands.release.main([str(run), "--out", str(out)]) == 0
    assert out.read_bytes() == (run / "model.pt").read_bytes()
    meta = json.loads(out.with_suffix(".metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("final", "matrix", "baseline", "drop_pct", "train_seconds", "tasks"):
        assert meta[key] == metrics[key], key
    assert meta["provenance"]["seed"] == 0 and meta["provenance"]["command"] and meta["run"] == str(run)
    with pytest.raises(SystemExit):
        commands.release.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")])
    assert "missing" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(not RELEASED.is_file(), reason="no released checkpoint in weights/")
def test_released_checkpoint_reproduces_its_reported_metrics(real_root, tmp_path):
    expected = json.loads(RELEASED.with_suffix(".metrics.json").read_text())
    out = tmp_path / "eval.json"
    assert commands.evaluate.main(["--weights", str(RELEASED), "--data_root", str(real_root), "--tasks", "all",
                                        "--cpu", "--quiet", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    for task, name in expected["metric_names"].items():
        assert got[name] == pytest.approx(expected["final"][task], abs=1e-3), name
