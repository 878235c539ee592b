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


def test_per_task_epochs_and_unknown_task(run_cli, synthetic_root, tmp_path):
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--epochs", "seg=3,cls=1"])
    assert cfg.epochs == {"seg": 3, "det": 2, "cls": 1}  # det: the smoke run's 2
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"epochs": {"seg": 5, "det": 7}}))
    cfg = config_of(run_cli, ["--data-root", str(synthetic_root), "--config", str(f), "--epochs", "det=1"])
    assert cfg.epochs == {"seg": 5, "det": 1, "cls": 8}  # defaults < recipe < flag, task by task
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


def test_the_flags_come_from_the_settings_dataclasses(run_cli):
    """Every RunConfig and RemedyOptions field meant for the command line has its flag, with the
    field's help text."""
    from dataclasses import fields

    from avalanche_onehead.cli import flag_name
    from avalanche_onehead.training import RunConfig
    from strategies import RemedyOptions

    actions = {a.dest: a for a in run_cli.build_parser()._actions}
    for cls, prefix in ((RunConfig, ""), (RemedyOptions, run_cli.REMEDY)):
        for f in fields(cls):
            action = actions.get(prefix + f.name)
            if f.metadata.get("cli"):
                assert action is not None and action.option_strings == [flag_name(f)], f.name
                assert action.help.startswith(f.metadata["help"].replace("%", "%%"))
            else:
                assert action is None, f.name


def test_help_shows_the_defaults_a_run_really_uses(run_cli):
    default = json.loads((ROOT / "experiments" / "configs" / "default.json").read_text())
    helps = {a.option_strings[0]: " ".join(a.help.split()) for a in run_cli.build_parser()._actions
             if a.option_strings}
    assert f"default: from the default recipe, {default['strategy']}" in helps["--strategy"]
    epochs = ",".join(f"{t}={n}" for t, n in default["epochs"].items())
    assert f"default: from the default recipe, {epochs}; 2 each on the synthetic benchmark" in helps["--epochs"]
    assert "default: from the default recipe, 10000)" in helps["--ewc-lambda"]
    assert "default: from the default recipe, det=10" in helps["--lwf-task-weights"]
    assert "(default: 10)" in helps["--replay-mem"] and "(default: 2)" in helps["--replay-per-step"]
    assert "(default: seg,det,cls)" in helps["--order"] and "(default: 0)" in helps["--seed"]


def test_an_unknown_recipe_key_or_remedy_option_is_an_error(run_cli, tmp_path, synthetic_root):
    for doc, name in (({"epoch": 3}, "epoch"), ({"remedy": {"ewc_lamda": 1.0}}, "ewc_lamda")):
        f = tmp_path / "r.json"
        f.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=name) as e:
            config_of(run_cli, ["--data-root", str(synthetic_root), "--config", str(f)])
        assert "r.json" in str(e.value)


def test_settings_need_no_data(run_cli, tmp_path, monkeypatch):
    """Choosing a run's settings reads no data and generates no synthetic benchmark."""
    import benchmarks.stream

    monkeypatch.chdir(tmp_path)  # no ./data here: the synthetic benchmark would be used
    monkeypatch.setattr(benchmarks.stream, "synthetic_root", lambda *a, **k: pytest.fail("generated data"))
    cfg = config_of(run_cli, ["--seed", "7"])
    assert cfg.image_size == 128 and cfg.epochs == {"seg": 2, "det": 2, "cls": 2}
