"""A ``"solver": "logistic"`` stage: the task's output rows become the optimum of a logistic
regression on the pooled input of the output layer, folded exactly into the rows, and nothing
else in the network moves."""
from __future__ import annotations

import avalanche_onehead.commands.run
from avalanche_onehead import commands

import json

import numpy as np
import pytest
import torch

from avalanche_onehead.model import create_model
from avalanche_onehead.probe import fit_logistic, fit_output_rows, output_inputs
from avalanche_onehead.stage_plans import StagePlan
from avalanche_onehead.targets import TaskBatch, TaskPart
from stage_checks import assert_only_own_rows_moved

SIZE = 64


def _batches(n_batches: int, batch: int, classes: int, seed: int = 0):
    """Images whose class shifts the mean of one colour channel: learnable from pooled features."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 3, SIZE, SIZE, generator=g) * 0.5
        x[torch.arange(batch), y % 3] += 1.5 * (1 + y // 3)[:, None, None].float()
        out.append((x, TaskBatch({"cls": TaskPart(torch.arange(batch), y)}, batch)))
    return out


def test_the_fitted_rows_give_the_regressions_own_logits():
    """The scaler folds into the weights: the model's cls logits equal scikit-learn's decision
    function on the same pooled features, and the other tasks' rows keep their weights."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=16)
    batches = _batches(4, 6, classes=model.cfg.num_classes["cls"])
    before = model.head[-1].weight.detach().clone()
    fitted = fit_output_rows(model, batches, "cls", c=0.5)
    assert fitted["samples"] == 24 and fitted["features"] == model.head[-1].in_channels

    x, y = output_inputs(model, batches, "cls")
    scaler, clf = fit_logistic(x.double().numpy(), y.numpy(), 0.5)
    want = clf.decision_function(scaler.transform(x.double().numpy()))
    model.eval()
    with torch.no_grad():
        got = torch.cat([model(b[0])["cls"] for b in batches]).numpy()
    seen = clf.classes_
    np.testing.assert_allclose(got[:, seen], want, rtol=1e-3, atol=1e-3)
    assert (got.argmax(1) == seen[want.argmax(1)]).all()
    assert got[:, np.setdiff1d(np.arange(got.shape[1]), seen)].max(initial=-np.inf) < got[:, seen].min()
    rows = model.output_slices()["cls"]
    keep = torch.ones(before.shape[0], dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(model.head[-1].weight[keep], before[keep])


def test_a_logistic_fit_needs_mean_pooling_and_samples_of_its_task():
    model = create_model(pretrained=False, pool="lse")
    with pytest.raises(ValueError, match="mean pooling"):
        fit_output_rows(model, _batches(1, 4, 10), "cls")
    with pytest.raises(ValueError, match="no cls sample"):
        fit_output_rows(create_model(pretrained=False), [], "cls")
    with pytest.raises(ValueError, match="dense output"):
        fit_output_rows(create_model(pretrained=False), _batches(1, 4, 10), "seg")


def test_the_plan_refuses_a_logistic_solver_outside_a_task_output_stage():
    assert StagePlan(train=["task_output"], solver="logistic").describe().endswith("as a logistic regression (L-BFGS)")
    assert StagePlan(train=["task_output"], solver="logistic").warmup_epochs(12) == 0
    with pytest.raises(ValueError, match="task_output"):
        StagePlan(train=["neck", "head", "output"], solver="logistic")
    with pytest.raises(ValueError, match="solver"):
        StagePlan(train=["task_output"], solver="adam")
    with pytest.raises(ValueError, match="logistic_c"):
        StagePlan(train=["task_output"], solver="logistic", logistic_c=0)


@pytest.mark.parametrize("plan, flag", [
    ({"train": ["neck"], "solver": "logistic"}, "task_output"),
    ({"train": ["task_output"], "solver": "newton"}, "solver"),
    ({"train": ["task_output"], "solver": "logistic", "logistic_c": -1}, "logistic_c"),
])
def test_a_bad_logistic_plan_is_one_line_at_the_cli(synthetic_root, tmp_path, capsys, plan, flag):
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"plan": {"cls": plan}}))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        commands.run.main(["--config", str(cfg), "--data-root", str(synthetic_root), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and flag in err[0]
    assert not out.exists()


def test_a_logistic_stage_moves_only_its_rows_and_runs_no_epoch(synthetic_root, tmp_path, capsys):
    """seg then cls under EWC + LwF, cls solved as a logistic regression: only cls's rows of the
    output layer moved, seg's matrix entry is untouched, and cls beats chance on its views."""
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"strategy": "ewc+lwf", "epochs": {"seg": 1, "cls": 5}, "seg_loss_stride": 2,
                               "remedy": {"ewc_lambda": 100.0},
                               "plan": {"seg": {"train": ["neck", "head", "output"], "views": 2},
                                        "cls": {"train": ["task_output"], "solver": "logistic", "views": 2}}}))
    out = tmp_path / "run"
    assert commands.run.main(
        ["--config", str(cfg), "--data-root", str(synthetic_root), "--tasks", "seg,cls", "--max-images", "16",
         "--image-size", str(SIZE), "--workers", "0", "--no-progress", "--out", str(out)]) == 0
    assert_only_own_rows_moved(out / "stage1_seg.pt", out / "stage2_cls.pt", "cls")
    m = json.loads((out / "metrics.json").read_text())
    assert m["matrix"][1][0] == m["matrix"][0][0] and m["plan"]["cls"]["solver"] == "logistic"
    log = capsys.readouterr().out
    assert "cls (no epochs; trains its own output channels only, as a logistic regression (L-BFGS)" in log
    assert "fitted cls's output channels: logistic regression (C=1) on 32 views" in log


def test_a_logistic_fit_reads_only_the_channels_its_rows_may_read():
    """With semantic_readers=["seg"], classification's rows never read the semantic channels: the
    regression is fitted on the trained channels alone and the closed weights stay 0."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=16, semantic_readers=["seg"])
    batches = _batches(3, 6, classes=model.cfg.num_classes["cls"])
    fitted = fit_output_rows(model, batches, "cls")
    last, rows = model.head[-1], model.output_slices()["cls"]
    assert fitted["features"] == last.in_channels - 16
    assert not last.weight[rows, -16:].any()
    x, y = output_inputs(model, batches, "cls")
    scaler, clf = fit_logistic(x[:, :-16].double().numpy(), y.numpy())
    model.eval()
    with torch.no_grad():
        got = torch.cat([model(b[0])["cls"] for b in batches]).numpy()
    np.testing.assert_allclose(got[:, clf.classes_], clf.decision_function(scaler.transform(x[:, :-16].double().numpy())),
                               rtol=1e-3, atol=1e-3)


def test_a_single_class_makes_rows_that_always_choose_it():
    """A smoke run's few images may hold one class only: no regression to fit, that class wins."""
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    x = torch.randn(3, 3, SIZE, SIZE)
    batches = [(x, TaskBatch({"cls": TaskPart(torch.arange(3), torch.full((3,), 4))}, 3))]
    fitted = fit_output_rows(model, batches, "cls")
    assert fitted["classes"] == 1 and fitted["train_accuracy"] == 1.0
    model.eval()
    with torch.no_grad():
        assert (model(torch.randn(2, 3, SIZE, SIZE))["cls"].argmax(1) == 4).all()
