"""experiments/probe.py: linear probes of a checkpoint's layers on the classification task."""
from __future__ import annotations

import avalanche_onehead.commands.probe
from avalanche_onehead import commands

import json

import numpy as np

from avalanche_onehead.probe import probe_accuracy


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
    assert run_cli.main(["--strategy", "naive", "--tasks", "cls", "--image-size", "64", "--epochs", "1",
                         "--max-images", "12", "--workers", "0", "--no-progress", "--device", "cpu",
                         "--data-root", str(synthetic_root), "--out", str(run)]) == 0
    capsys.readouterr()
    assert commands.probe.main(["--weights", str(run / "model.pt"), "--max-images", "12"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("probe_backbone", "probe_neck", "probe_head", "model_top1"):
        assert 0.0 <= r[k] <= 1.0, k
    assert r["train_images"] == 12 and r["val_images"] == 12
