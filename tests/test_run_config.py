"""run.py settings: defaults < --config file < explicit flags; bad files are one clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def config_of(run_cli, argv):
    return run_cli.make_config(run_cli.parse_args(argv))


def test_config_file_sets_values_and_flags_override(run_cli, tmp_path, synthetic_root):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": {"seg": 5, "det": 7, "cls": 2}, "lr": 0.003, "backbone_lr_mult": 0.2,
                             "remedy": {"ewc_lambda": 50.0}}))
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--config", str(f), "--lr", "0.01",
                              "--replay-per-step", "3"])
    assert cfg.epochs == {"seg": 5, "det": 7, "cls": 2}
    assert cfg.lr == 0.01  # explicit flag wins over the file
    assert cfg.backbone_lr_mult == 0.2  # file value kept (no flag for it)
    assert cfg.remedy == {"ewc_lambda": 50.0, "replay_per_step": 3}


def test_tasks_subset_keeps_order_and_epochs_default(run_cli, synthetic_root):
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--tasks", "cls,seg"])
    assert cfg.order == ["seg", "cls"]
    assert cfg.epochs == {"seg": 2, "cls": 2}  # synthetic benchmark default


def test_per_task_epochs_and_unknown_task(run_cli, synthetic_root):
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--epochs", "seg=3,cls=1"])
    assert cfg.epochs == {"seg": 3, "det": 8, "cls": 1}
    with pytest.raises(ValueError, match="not in the run"):
        config_of(run_cli, ["--data-root", str(synthetic_root), "--tasks", "seg", "--epochs", "det=2"])


def test_bad_config_file_is_one_clear_error(run_cli, tmp_path, synthetic_root, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        run_cli.main(["--data-root", str(synthetic_root), "--config", str(bad)])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bad.json" in err[0]
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(SystemExit):
        run_cli.main(["--data-root", str(synthetic_root), "--config", str(unknown)])
    assert "learning_rate" in capsys.readouterr().err


def test_shipped_configs_parse(run_cli, synthetic_root):
    for f in sorted((ROOT / "experiments" / "configs").glob("*.json")):
        cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--config", str(f)])
        assert cfg.image_size == 512 and set(cfg.epochs) == {"seg", "det", "cls"}


def test_no_config_means_the_tuned_default_recipe(run_cli, synthetic_root):
    default = json.loads((ROOT / "experiments" / "configs" / "default.json").read_text())
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root)])
    assert cfg.strategy == default["strategy"] and cfg.lr == default["lr"]
    assert cfg.remedy == default["remedy"] and cfg.model == default["model"]
    assert cfg.epochs == {"seg": 2, "det": 2, "cls": 2}  # the synthetic benchmark stays a smoke test
    assert cfg.image_size == 128  # at the synthetic images' own size
    assert config_of(run_cli, ["--data-root", str(synthetic_root), "--image-size", "256"]).image_size == 256


def test_a_flag_equal_to_its_default_still_beats_the_config(run_cli, synthetic_root):
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--strategy", "naive"])
    assert cfg.strategy == "naive"
    joint = config_of(run_cli, ["--data-root", str(synthetic_root), "--joint"])
    assert joint.strategy == "naive" and joint.joint
    assert joint.remedy == {}  # the recipe's LwF options do not follow it into joint training
