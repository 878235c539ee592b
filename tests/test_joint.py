"""Joint training (all tasks in one stage): the labelled upper bound, not a challenge entry."""
from __future__ import annotations

import json
import re

import pytest
import torch

from avalanche_onehead.training import RunConfig, stage_outputs, stage_plan


def test_joint_stage_plan_sees_as_many_images_as_the_sequential_run():
    cfg = RunConfig(epochs={"seg": 8, "det": 6, "cls": 1}, joint=True)
    (name, exps, epochs), = stage_plan(cfg, ["e0", "e1", "e2"])
    assert name == "joint" and exps == ["e0", "e1", "e2"] and epochs == 5  # (8 + 6 + 1) / 3
    seq = stage_plan(RunConfig(epochs={"seg": 8, "det": 6, "cls": 1}), ["e0", "e1", "e2"])
    assert [(n, e) for n, _, e in seq] == [("seg", 8), ("det", 6), ("cls", 1)]


def test_a_stage_computes_the_outputs_of_its_task_and_the_tasks_before_it():
    seq = stage_plan(RunConfig(order=["det", "seg", "cls"]), ["e0", "e1", "e2"])
    assert [stage_outputs(seq, i) for i in range(3)] == [["det"], ["det", "seg"], ["det", "seg", "cls"]]
    joint = stage_plan(RunConfig(joint=True), ["e0", "e1", "e2"])
    assert stage_outputs(joint, 0) is None  # one stage of every task: every output


def test_joint_run_writes_one_row_for_every_task(synthetic_root, run_cli, tmp_path, one_thread):
    out = tmp_path / "joint"
    assert run_cli.main(["--joint", "--image-size", "64", "--epochs", "1", "--max-images", "8", "--workers", "0",
                         "--no-progress", "--device", "cpu", "--data-root", str(synthetic_root),
                         "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"] == "joint" and m["joint"] is True and m["stages"] == ["joint"]
    assert len(m["matrix"]) == 1 and len(m["matrix"][0]) == 3
    assert m["final"] == m["baseline"] == dict(zip(m["tasks"], m["matrix"][0]))
    assert "BWT" not in m  # nothing sequential to forget
    log = (out / "log.txt").read_text()  # the joint stage's loss, as Avalanche logged its one epoch
    logged = float(re.search(r"Loss_Epoch/train_phase/train_stream/Task000 = ([\d.]+)", log).group(1))
    assert set(m["last_epoch_loss"]) == {"joint"} and m["last_epoch_loss"]["joint"] == pytest.approx(logged, rel=1e-3)
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert ckpt["provenance"]["trained"] == ["seg", "det", "cls"]
    assert (out / "stage1_joint.pt").is_file() and (out / "matrix.png").is_file()


@pytest.mark.parametrize("extra", [["--strategy", "ewc"], ["--tasks", "cls"], ["--batch-size", "2"]])
def test_joint_with_a_remedy_or_one_task_is_one_error(synthetic_root, run_cli, tmp_path, capsys, extra):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as e:
        run_cli.main(["--joint", *extra, "--data-root", str(synthetic_root), "--out", str(out), "--no-progress"])
    assert e.value.code != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "joint" in err[0]
    assert not out.exists()
