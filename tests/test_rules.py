"""rules.py is the one home of the challenge's rules: each check that applies a rule follows it.

Every test moves one constant of ``avalanche_onehead.rules`` (monkeypatch) and sees the check
that applies it move with it; a check that kept its own copy of the number would not.
"""
from __future__ import annotations

import avalanche_onehead.commands.report
from avalanche_onehead import commands

from types import SimpleNamespace

import pytest
import torch

from avalanche_onehead import rules
from avalanche_onehead.compliance import card, head_report, neck_report
from avalanche_onehead.evaluation import summary_table
from avalanche_onehead.model import count_parameters, create_model
from avalanche_onehead.validation import SettingError, check_config_document
from strategies import RemedyOptions, build_plugins
from strategies.remedies import TaskBudgetReplay

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(pretrained=False).eval()


def test_the_numbers_are_the_challenges_and_the_projects():
    assert (rules.PARAM_LIMIT, rules.PROJECT_PARAM_LIMIT) == (8_000_000, 5_000_000)
    assert rules.HEAD_LAYERS == (2, 3) and rules.NECK_MAX_FPN_LAYERS == 1
    assert rules.MAX_REPLAY_PER_TASK_PER_STEP == 10 and rules.DROP_BAR_PCT == 5.0
    assert (rules.LATENCY_BAR_MS, rules.CHALLENGE_LATENCY_MS) == (20.0, 150.0)
    assert (rules.TRAIN_BUDGET_MIN, rules.CHALLENGE_TRAIN_MIN) == (45.0, 120.0)


def test_the_compliance_card_follows_the_parameter_limit(model, monkeypatch):
    total = count_parameters(model)["total"]
    assert card(model, None)["params_ok"]
    monkeypatch.setattr(rules, "PARAM_LIMIT", total)  # "fewer than": exactly the limit fails
    assert not card(model, None)["params_ok"]
    monkeypatch.setattr(rules, "PARAM_LIMIT", total + 1)
    assert card(model, None)["params_ok"]


def test_the_card_gives_a_latency_verdict_against_the_projects_bar(model, monkeypatch):
    assert "latency_within_project_bar" not in card(model, None)  # nothing measured: no verdict
    measured = {"median_ms": 30.0}
    got = card(model, measured)
    assert got["latency_bar_ms"] == 20.0 and got["latency_within_project_bar"] is False
    monkeypatch.setattr(rules, "LATENCY_BAR_MS", 30.0)  # "at most": exactly the bar passes
    assert card(model, measured)["latency_within_project_bar"] is True
    total = count_parameters(model)["total"]
    assert card(model, None)["params_within_project_bar"]
    monkeypatch.setattr(rules, "PROJECT_PARAM_LIMIT", total - 1)
    assert not card(model, None)["params_within_project_bar"]


def test_head_layers_rule_reaches_the_card_the_model_and_the_config(model, monkeypatch):
    assert head_report(model)["ok"] and model.cfg.head_layers == 3
    monkeypatch.setattr(rules, "HEAD_LAYERS", (2, 2))
    assert not head_report(model)["ok"]
    with pytest.raises(ValueError, match=r"head_layers must be 2\.\.2"):
        create_model(pretrained=False, head_layers=3)
    with pytest.raises(SettingError, match="head_layers"):
        check_config_document({"model": {"head_layers": 3}}, "recipe.json")
    check_config_document({"model": {"head_layers": 2}}, "recipe.json")  # still allowed


def test_the_neck_rule_reaches_the_card(model, monkeypatch):
    assert neck_report(model)["ok"] and neck_report(model)["output_convs"] == 1
    monkeypatch.setattr(rules, "NECK_MAX_FPN_LAYERS", 0)
    assert not neck_report(model)["ok"]


def test_the_replay_cap_reaches_the_plugin_the_config_and_the_flag(monkeypatch, run_cli, capsys):
    assert TaskBudgetReplay(mem_per_task=6, per_step=6).per_step == 6
    monkeypatch.setattr(rules, "MAX_REPLAY_PER_TASK_PER_STEP", 5)
    with pytest.raises(ValueError, match=r"allows 1\.\.5"):
        TaskBudgetReplay(mem_per_task=6, per_step=6)
    with pytest.raises(ValueError, match=r"allows 1\.\.5"):
        build_plugins("replay", RemedyOptions(replay_mem_per_task=6, replay_per_step=6))
    with pytest.raises(SettingError, match="replay_per_step"):
        check_config_document({"remedy": {"replay_per_step": 6}}, "recipe.json")
    with pytest.raises(SystemExit):
        run_cli.parse_args(["--replay-per-step", "6"])
    assert "--replay-per-step" in capsys.readouterr().err
    assert run_cli.parse_args(["--replay-per-step", "5"]).remedy_replay_per_step == 5


def _metrics(drop: float) -> dict:
    return {"strategy": "ewc", "tasks": ["seg", "det"], "metric_names": {"seg": "mIoU", "det": "mAP"},
            "matrix": [[0.5, 0.0], [0.5 * (1 - drop / 100), 0.2]], "baseline": {"seg": 0.5, "det": 0.2},
            "drop_pct": {"seg": drop, "det": 0.0}}


def test_the_drop_bar_reaches_the_closing_summary_and_the_figure(monkeypatch):
    import matplotlib.pyplot as plt

    from avalanche_onehead.figures import matrix_figure

    lines = summary_table(_metrics(4.0))
    assert "(bar 5 %)" in lines[-1] and lines[-1].split()[-2:] == ["ok", "ok"]
    fig = matrix_figure(_metrics(4.0))
    bars = fig.axes[1].patches
    assert [tuple(round(c, 3) for c in b.get_facecolor()[:3]) for b in bars][0] == (0.173, 0.627, 0.173)  # green
    plt.close(fig)
    monkeypatch.setattr(rules, "DROP_BAR_PCT", 3.0)
    lines = summary_table(_metrics(4.0))
    assert "(bar 3 %)" in lines[-1] and "> 3 %" in lines[-1]
    fig = matrix_figure(_metrics(4.0))
    bars, line = fig.axes[1].patches, fig.axes[1].lines[0]
    assert tuple(round(c, 3) for c in bars[0].get_facecolor()[:3]) == (0.839, 0.153, 0.157)  # red
    assert list(line.get_ydata()) == [3.0, 3.0] and line.get_label() == "3 % limit"
    plt.close(fig)


def test_the_reports_targets_table_follows_the_project_bars(monkeypatch):
    report = commands.report
    run = {"final": {"seg": 0.5}, "drop_pct": {"seg": 4.0}, "params": 3_000_000, "train_seconds": 40 * 60}
    fake = SimpleNamespace(tasks=["seg"], names={"seg": "mIoU"}, default=[run],
                           compliance={"latency": {"median_ms": 25.0}})

    def verdicts() -> dict[str, str]:
        rows = report.table_targets(fake).splitlines()[2:]
        return {r.split("|")[1].strip(): r.split("|")[2].strip() + " -> " + r.split("|")[4].strip() for r in rows}

    before = verdicts()
    assert before["seg drop vs its baseline"] == "≤ 5 % -> yes"
    assert before["parameters"] == "≤ 5 M -> yes"
    assert before["latency 512², batch 1, with post-processing, CPU"] == "≤ 20 ms -> **no**"
    assert before["default training time on the CPU"] == "≤ 45 min -> yes"
    for name, value in (("DROP_BAR_PCT", 3.0), ("PROJECT_PARAM_LIMIT", 2_000_000), ("LATENCY_BAR_MS", 30.0),
                        ("TRAIN_BUDGET_MIN", 30.0)):
        monkeypatch.setattr(rules, name, value)
    after = verdicts()
    assert after["seg drop vs its baseline"] == "≤ 3 % -> **no**"
    assert after["parameters"] == "≤ 2 M -> **no**"
    assert after["latency 512², batch 1, with post-processing, CPU"] == "≤ 30 ms -> yes"
    assert after["default training time on the CPU"] == "≤ 30 min -> **no**"
    assert report.rule_values()["rules.latency_ms"] == "30"
