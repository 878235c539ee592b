"""A tiny end-to-end ``experiments/run.py`` on the synthetic benchmark: the run folder contract."""
from __future__ import annotations

import avalanche_onehead.commands.evaluate
import avalanche_onehead.commands.run
from avalanche_onehead import commands

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from avalanche_onehead import rules
from avalanche_onehead.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "64", "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu"]


def _run_main(argv) -> int:
    return commands.run.main(argv)


@pytest.fixture(scope="module")
def run_dir(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    assert _run_main(["--data-root", str(synthetic_root), "--max-images", "8", "--out", str(out)] + TINY) == 0
    return out


def _fraction(v) -> bool:
    return type(v) is float and 0.0 <= v <= 1.0


def test_metrics_json_follows_the_design_schema(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("strategy", "seed", "tasks", "metric_names", "matrix", "baseline", "final", "drop_pct",
                "params", "train_seconds"):
        assert key in m, key
    default = json.loads((Path(__file__).resolve().parents[1] / "experiments/configs/default.json").read_text())
    assert m["strategy"] == default["strategy"] and m["seed"] == 0  # no --strategy: the default recipe's
    tasks = m["tasks"]
    assert tasks == ["seg", "det", "cls"]
    assert m["metric_names"] == {"seg": "mIoU", "det": "mAP", "cls": "Top-1"}
    matrix = m["matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert all(_fraction(v) for row in matrix for v in row), matrix
    for j, t in enumerate(tasks):
        assert m["baseline"][t] == matrix[j][j]  # right after its own stage
        assert m["final"][t] == matrix[-1][j]
        b, f = m["baseline"][t], m["final"][t]
        expected = 100.0 * (b - f) / b if b > 0 else 0.0
        assert m["drop_pct"][t] == pytest.approx(expected)
        assert type(m["drop_pct"][t]) is float and math.isfinite(m["drop_pct"][t])
    assert type(m["params"]) is int and 1_000_000 < m["params"] < rules.PARAM_LIMIT
    assert type(m["train_seconds"]) is float and m["train_seconds"] > 0
    assert m["synthetic"] is True
    # the mAP@0.5 companion: detection after every stage
    assert len(m["mAP50_matrix"]) == 3 and all(_fraction(v) for v in m["mAP50_matrix"])
    # a task not trained yet scores what an untrained head scores; cls before its stage is
    # measured too (every task is evaluated after every experience)
    assert all(isinstance(v, float) for v in matrix[0])


def test_run_folder_holds_checkpoints_events_and_figure(run_dir):
    for name in ("model.pt", "stage1_seg.pt", "stage2_det.pt", "stage3_cls.pt", "config.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    for i, task in enumerate(("seg", "det", "cls"), start=1):
        meta = read_checkpoint(run_dir / f"stage{i}_{task}.pt")
        assert meta["provenance"]["stage"] == i
        assert meta["provenance"]["trained"] == ["seg", "det", "cls"][:i]
        assert meta["image_size"] == 64 and meta["data"]["synthetic"] is True
    final = read_checkpoint(run_dir / "model.pt")
    assert final["provenance"]["trained"] == ["seg", "det", "cls"]
    events = list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    png = run_dir / "matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_tensorboard_holds_the_task_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for ev_file in (run_dir / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev_file))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", []))
    for name, label, exp in (("mIoU", 0, 0), ("mAP", 1, 1), ("Top-1", 2, 2)):
        assert f"{name}/eval_phase/test_stream/Task{label:03d}/Exp{exp:03d}" in tags, sorted(tags)[:20]


def test_single_task_run_and_eval_agree(synthetic_root, tmp_path, capsys):
    out = tmp_path / "det_only"
    # 16 = the whole synthetic val split, so eval.py sees the same images as the run
    assert _run_main(["--data-root", str(synthetic_root), "--tasks", "det", "--max-images", "16",
                      "--out", str(out)] + TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"] == ["det"] and m["metric_names"] == {"det": "mAP"}
    assert len(m["matrix"]) == 1 and len(m["matrix"][0]) == 1 and _fraction(m["matrix"][0][0])
    assert m["baseline"]["det"] == m["final"]["det"] == m["matrix"][0][0]
    assert (out / "stage1_det.pt").is_file() and (out / "model.pt").is_file()
    assert not (out / "stage2_det.pt").exists() and not list(out.glob("stage*_seg.pt"))
    capsys.readouterr()
    ev = commands.evaluate
    assert ev.main(["--weights", str(out / "model.pt"), "--tasks", "det", "--cpu", "--workers", "0",
                    "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the number a run logs and the number eval.py prints come from the same code and data
    assert res["mAP"] == pytest.approx(m["matrix"][0][0], abs=1e-6)
    assert res["mAP50"] == pytest.approx(m["mAP50_matrix"][0], abs=1e-6)
    assert "mIoU" not in res and "Top-1" not in res


def test_unknown_strategy_is_one_error_line(synthetic_root, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        _run_main(["--strategy", "no-such-remedy", "--data-root", str(synthetic_root), "--out", str(out)] + TINY)
    assert info.value.code != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "no-such-remedy" in err[0]
    assert not out.exists()  # fails before any work


def test_stage_one_of_a_sequence_is_the_single_task_run(synthetic_root, tmp_path):
    """Why the report may take the seg single-task baseline from stage 1 of the sequence:
    same initialisation, same per-stage seed, no remedy acting yet -> the same weights."""
    args = ["--data-root", str(synthetic_root), "--max-images", "6", "--batch-size", "2", "--no-pretrained"] + TINY
    seq, alone = tmp_path / "seq", tmp_path / "alone"
    assert _run_main(args + ["--strategy", "ewc+replay+lwf", "--out", str(seq)]) == 0
    assert _run_main(args + ["--strategy", "naive", "--tasks", "seg", "--out", str(alone)]) == 0
    a, b = (read_checkpoint(f / "stage1_seg.pt")["state_dict"] for f in (seq, alone))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()) <= 1e-6
    ms, ma = (json.loads((f / "metrics.json").read_text()) for f in (seq, alone))
    assert ms["matrix"][0][0] == pytest.approx(ma["baseline"]["seg"], abs=1e-6)
