"""experiments/probe.py: linear probes of a checkpoint's layers on an image-level task
(classification by default); dense tasks are refused."""
from __future__ import annotations

import avalanche_onehead.commands.probe
from avalanche_onehead import commands

import json
from pathlib import Path

import numpy as np
import pytest

from avalanche_onehead.probe import probe_accuracy, probe_checkpoint


def test_probe_accuracy_separates_separable_features_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 8)) * 5
    x = centres[y] + rng.normal(size=(120, 8))
    assert probe_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
    noise = rng.normal(size=(120, 8))
    assert probe_accuracy(noise[::2], y[::2], noise[1::2], y[1::2]) < 0.6


def test_probe_cli_on_a_tiny_run(tmp_path, synthetic_root, run_cli, capsys):
    run = tmp_path / "run"
    frozen = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "frozen.json"  # no semantic channels
    assert run_cli.main(["--config", str(frozen), "--strategy", "naive", "--tasks", "cls", "--image-size", "64",
                         "--epochs", "1", "--max-images", "12", "--workers", "0", "--no-progress", "--device", "cpu",
                         "--data-root", str(synthetic_root), "--out", str(run)]) == 0
    capsys.readouterr()
    assert commands.probe.main(["--weights", str(run / "model.pt"), "--max-images", "12"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("probe_backbone", "probe_neck", "probe_head", "model_top1"):
        assert 0.0 <= r[k] <= 1.0, k
    assert r["train_images"] == 12 and r["val_images"] == 12
    assert "probe_semantic" not in r  # the model has no fixed semantic channels


def test_probe_reads_the_fixed_semantic_channels_alone(tmp_path, synthetic_root, run_cli, capsys):
    """With semantic_channels the probe also fits the pooled fixed channels alone: the pooled
    neck output's last k channels, which the hidden layers pass on unchanged."""
    import torch

    from avalanche_onehead.checkpoint import load_checkpoint
    from avalanche_onehead.probe import pooled_features
    from avalanche_onehead.tasks import TASKS

    run, cfg = tmp_path / "run", tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"model": {"semantic_channels": 8}}))
    assert run_cli.main(["--strategy", "naive", "--tasks", "cls", "--image-size", "64", "--epochs", "1",
                         "--max-images", "12", "--workers", "0", "--no-progress", "--device", "cpu",
                         "--config", str(cfg), "--data-root", str(synthetic_root), "--out", str(run)]) == 0
    capsys.readouterr()
    assert commands.probe.main(["--weights", str(run / "model.pt"), "--max-images", "12"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0.0 <= r["probe_semantic"] <= 1.0
    model, _ = load_checkpoint(run / "model.pt")
    x = torch.randn(3, 3, 64, 64)
    feats, _ = pooled_features(model.eval(), [(x, [TASKS["cls"].target(label=i) for i in range(3)])])
    torch.testing.assert_close(torch.from_numpy(feats["semantic"]), torch.from_numpy(feats["head"][:, -8:]))


@pytest.mark.parametrize("task, why", [("seg", "dense output"), ("det", "dense output"), ("nope", "unknown task")])
def test_a_task_without_an_image_level_output_is_refused_by_name(task, why, tmp_path, capsys):
    with pytest.raises(ValueError) as info:
        probe_checkpoint(tmp_path / "never_read.pt", task=task)  # refused before the checkpoint is read
    assert f"'{task}'" in str(info.value) and why in str(info.value)
    with pytest.raises(SystemExit) as e:
        commands.probe.main(["--weights", str(tmp_path / "never_read.pt"), "--task", task])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: probe:") and f"'{task}'" in err[0] and why in err[0]


@pytest.fixture()
def second_cls():
    """Another image-level task on the same images: classification's spec under another name and label."""
    from dataclasses import replace

    from avalanche_onehead.tasks import TASKS, register

    spec = register(replace(TASKS["cls"], name="cls2", label=7))
    yield spec
    TASKS.pop(spec.name)


def test_the_probed_task_is_a_parameter(second_cls, tmp_path, synthetic_root):
    """Probing "cls2" reads its own output channels for the model's Top-1 and fits the probes to
    its targets: on the same images as "cls", the layers' probes agree and the model's Top-1 is
    the one of cls2's logits."""
    import torch

    from avalanche_onehead.checkpoint import save_checkpoint
    from avalanche_onehead.model import create_model
    from benchmarks import load_split

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    with torch.no_grad():  # cls2's logits: always class 0, so its Top-1 is class 0's share of val
        model.head[-1].bias[model.output_slices()["cls2"]] = torch.arange(10, 0, -1).float() * 100
    names = {t: [f"{t}{i}" for i in range(n)] for t, n in model.cfg.num_classes.items()}
    weights = save_checkpoint(tmp_path / "two.pt", model, classes=names, image_size=64)
    a = probe_checkpoint(weights, synthetic_root, max_images=12)
    b = probe_checkpoint(weights, synthetic_root, max_images=12, task="cls2")
    assert {k: v for k, v in a.items() if k != "model_top1"} == {k: v for k, v in b.items() if k != "model_top1"}
    val = load_split(synthetic_root, "cls2", "val")
    val.samples = val.samples[:12]
    share_of_class_0 = sum(int(val.make_target(val.load(i)[1]).label) == 0 for i in range(len(val))) / len(val)
    assert b["model_top1"] == pytest.approx(share_of_class_0) and b["model_top1"] != a["model_top1"]


@pytest.mark.parametrize("argv, message", [
    (["--weights", "missing.pt"], "checkpoint file not found"),
    (["--weights", "model.onnx"], "ONNX export"),
    (["--weights", "m.pt", "--max-images", "0"], "--max-images"),
])
def test_probe_cli_refuses_bad_input_in_one_line(tmp_path, monkeypatch, refused, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in refused(commands.probe.main, argv)
