"""Gradient projection (the ``gpm`` remedy): GPM's energy criterion on hand-made covariances, a
projected update that leaves a conv's response to the memorised inputs unchanged, and a two-stage
run in which the first task's outputs survive a second stage that moves the shared layers."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from benchmarks import build_stream
from strategies import RemedyOptions, build_plugins
from strategies.projection import (GradientProjection, check_no_norms, extend_basis, layer_inputs,
                                   project_rows, protected_layers)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_energy_criterion_keeps_the_fewest_directions():
    cov = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.1]))  # total energy 16.1
    assert extend_basis(None, cov, 0.90).shape == (4, 2)  # 10 + 5 >= 14.49
    assert extend_basis(None, cov, 0.95).shape == (4, 3)  # 15 < 15.295 <= 16
    basis = extend_basis(None, cov, 0.90)
    # the kept directions are the two strongest axes
    assert torch.allclose(basis.abs().sum(1), torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6)


def test_a_later_task_adds_only_what_the_basis_misses():
    first = extend_basis(None, torch.diag(torch.tensor([4.0, 0.0, 0.0])), 0.99)
    assert first.shape == (3, 1)
    # a task whose energy lies on axis 0 (already kept) and axis 2: one new direction, axis 2
    both = extend_basis(first, torch.diag(torch.tensor([3.0, 0.0, 1.0])), 0.99)
    assert both.shape == (3, 2)
    assert torch.allclose(both.T @ both, torch.eye(2), atol=1e-6)
    assert torch.allclose(both[:, 1].abs(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    # a task entirely inside the kept space adds nothing
    assert extend_basis(both, torch.diag(torch.tensor([1.0, 0.0, 2.0])), 0.99).shape == (3, 2)


def test_a_projected_update_keeps_the_conv_response_to_memorised_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    # memorised inputs: 4 channels that are mixtures of 2 patterns (a low-rank input space)
    mix = torch.randn(2, 4)
    old = torch.einsum("kc,bkhw->bchw", mix, torch.randn(3, 2, 5, 5))
    rows = layer_inputs(conv, old, positions=1000, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (3 * 25, 4 * 9 + 1) and torch.all(rows[:, -1] == 1)
    basis = extend_basis(None, rows.T.double() @ rows.double(), 1.0)
    assert basis.shape[1] < rows.shape[1]  # some directions stay free
    before = conv(old)
    delta = torch.randn(6, 37)
    moved = project_rows(delta, basis)
    with torch.no_grad():
        conv.weight += moved[:, :-1].reshape(conv.weight.shape)
        conv.bias += moved[:, -1]
    assert torch.allclose(conv(old), before, atol=1e-4)
    new = torch.randn(1, 4, 5, 5)  # an input outside the memorised space does see the update
    with torch.no_grad():
        conv.weight -= moved[:, :-1].reshape(conv.weight.shape)
        conv.bias -= moved[:, -1]
        reference = conv(new)
        conv.weight += moved[:, :-1].reshape(conv.weight.shape)
        conv.bias += moved[:, -1]
    assert not torch.allclose(conv(new), reference, atol=1e-3)


def test_layer_inputs_are_the_unfolded_patches_at_the_sampled_places():
    import torch.nn.functional as F

    for k, channels in ((3, 6), (1, 5)):
        conv = nn.Conv2d(channels, 4, k, padding=k // 2)
        x = torch.randn(2, channels, 7, 9)
        rows = layer_inputs(conv, x, 20, torch.Generator().manual_seed(3))
        where = torch.randperm(63, generator=torch.Generator().manual_seed(3))[:20]
        unfolded = F.unfold(x, k, padding=k // 2)[:, :, where].transpose(1, 2).reshape(40, -1)
        assert torch.equal(rows[:, :-1], unfolded)
    assert torch.all(layer_inputs(nn.Conv2d(2, 2, 1, bias=False), torch.randn(1, 2, 3, 3), 4,
                                  torch.Generator())[:, -1] == 0)  # no bias: no constant input


def test_protected_layers_are_the_shared_convs_before_the_output_layer():
    model = create_model(pretrained=False)
    names = protected_layers(model)
    assert "head.2" not in names and {"neck.lateral.0", "neck.output.0", "head.0.0", "head.1.0"} <= set(names)
    check_no_norms(model)
    with pytest.raises(ValueError, match="without normalisation"):
        check_no_norms(create_model(pretrained=False, norm="gn"))


def _strategy(model, plugins):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        evaluator = EvaluationPlugin(loggers=[])
    return Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2),
                 criterion=OneHeadCriterion(model.task_settings), train_mb_size=2, train_epochs=2,
                 eval_mb_size=2, device="cpu", plugins=plugins, evaluator=evaluator, eval_every=-1)


@torch.no_grad()
def _seg_outputs(model, dataset) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(dataset[i][0][None])["seg"] for i in range(len(dataset))])
    model.train()
    return out


def test_the_first_task_survives_a_stage_that_moves_the_shared_layers(synthetic_root):
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    stream = build_stream(synthetic_root, ["seg", "cls"], 64, model.mean, model.std, max_images=4)
    for p in model.backbone.parameters():  # as every stage plan of the cached recipes: GPM guards neck and head
        p.requires_grad_(False)
    (gpm,) = build_plugins("gpm", RemedyOptions(gpm_threshold=1.0, gpm_positions=10_000))
    strategy = _strategy(model, [gpm])
    seg_exp, cls_exp = stream.benchmark.train_stream
    strategy.train(seg_exp, drop_last=True, num_workers=0)
    assert gpm.stages == [0]
    ranks = gpm.ranks()
    assert set(ranks) == set(protected_layers(model))
    assert "head.0.0 " in gpm.note() and GradientProjection().note() is None
    # 4 images x 8 x 8 places at stride 8: fewer samples than a 3x3 conv's 96 * 9 + 1 inputs
    assert ranks["head.0.0"][0] <= 4 * 64 < ranks["head.0.0"][1]
    # the stage memorised its (randomly augmented) training views; this test checks the exact
    # promise on fixed images, so the memory is made again from seg's validation images
    seg_views = stream.benchmark.test_stream[0].dataset
    gpm.bases, gpm.stages = {}, []
    gpm.memorise(strategy, 0, seg_views)
    after_seg = _seg_outputs(model, seg_views)
    shared = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("neck", "head.0", "head.1"))}
    cls_rows = model.output_slices()["cls"]
    cls_before = model.head[-1].weight[cls_rows].clone()

    strategy.train(cls_exp, drop_last=True, num_workers=0)
    assert gpm.stages == [0]  # the stream's last stage is not memorised: nothing would read it
    # the shared layers moved (in the directions the seg views do not use), and so did cls's read-out
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in shared.items() if k.startswith("head.1"))
    assert not torch.equal(model.head[-1].weight[cls_rows], cls_before)
    # ...yet the seg outputs on the seg stage's views are what they were
    assert torch.allclose(_seg_outputs(model, seg_views), after_seg, atol=1e-3)


def test_resume_keeps_the_bases_and_a_fork_computes_the_missing_ones(synthetic_root):
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    stream = build_stream(synthetic_root, ["seg", "cls"], 64, model.mean, model.std, max_images=4)
    gpm = GradientProjection(threshold=0.99, positions=32)
    strategy = _strategy(model, [gpm])
    seg_exp, cls_exp = stream.benchmark.train_stream
    strategy.train(seg_exp, drop_last=True, num_workers=0)

    resumed = GradientProjection(threshold=0.99, positions=32)
    resumed.restore(gpm.resume_state(), strategy, finished=[seg_exp])
    assert not resumed.needs_rebuild(0)
    assert all(torch.equal(resumed.bases[k], v) for k, v in gpm.bases.items())

    # forked from a run without gpm: no state; the finished stage's bases are made again from its
    # checkpoint (the weights the model holds here) and its views, as the end of the stage made them
    forked = GradientProjection(threshold=0.99, positions=32)
    forked.restore({}, strategy, finished=[seg_exp])
    assert forked.needs_rebuild(0)
    forked.rebuild_stage(strategy, 0, seg_exp)
    assert forked.stages == [0] and not forked.needs_rebuild(0)
    assert set(forked.bases) == set(gpm.bases)
    for k, b in forked.bases.items():  # live views are drawn anew, so the bases agree in kind, not bit for bit
        assert b.shape[0] == gpm.bases[k].shape[0] and 0 < b.shape[1] <= b.shape[0]
        assert torch.allclose(b.T @ b, torch.eye(b.shape[1]), atol=1e-4)


def test_bases_made_with_other_options_are_made_again(synthetic_root):
    """A resume or fork that changes the threshold does not go on with the old bases: it makes
    them again from the finished stage (and says so in the log's note); the same options keep them."""
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    stream = build_stream(synthetic_root, ["seg", "cls"], 64, model.mean, model.std, max_images=4)
    gpm = GradientProjection(threshold=0.99, positions=32)
    strategy = _strategy(model, [gpm])
    seg_exp = stream.benchmark.train_stream[0]
    strategy.train(seg_exp, drop_last=True, num_workers=0)
    state = gpm.resume_state()
    assert state["made_with"] == {"threshold": 0.99, "positions": 32, "views": 480}

    lower = GradientProjection(threshold=0.5, positions=32)
    lower.restore(state, strategy, finished=[seg_exp])
    assert lower.needs_rebuild(0) and not lower.bases
    lower.rebuild_stage(strategy, 0, seg_exp)
    assert all(lower.bases[k].shape[1] < b.shape[1] for k, b in gpm.bases.items())
    note = lower.note()
    assert "made again" in note and "threshold 0.99" in note and "threshold 0.5" in note
    assert "made again" not in lower.note()  # said once

    older = GradientProjection(threshold=0.99, positions=32)  # a state from before the options were stored
    older.restore({k: v for k, v in state.items() if k != "made_with"}, strategy, finished=[seg_exp])
    assert older.needs_rebuild(0) and "unrecorded options" in (older.rebuild_stage(strategy, 0, seg_exp) or older.note())

    same = GradientProjection(threshold=0.99, positions=32)
    same.restore(state, strategy, finished=[seg_exp])
    assert not same.needs_rebuild(0) and "made again" not in same.note()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        GradientProjection(threshold=0.0)
    with pytest.raises(ValueError, match="positions"):
        GradientProjection(positions=0)


def test_a_fork_into_gpm_equals_a_gpm_run_from_scratch(synthetic_root, run_cli, tmp_path):
    """On the frozen-feature cache (fixed views), the bases a fork makes again from the stage-1
    checkpoint are those a gpm run made at the end of stage 1: the two runs end bit-identical."""
    import json

    from avalanche_onehead.commands import fork

    tiny = ["--data-root", str(synthetic_root), "--max-images", "6", "--image-size", "64", "--epochs", "1",
            "--workers", "0", "--no-progress", "--device", "cpu", "--gpm-positions", "16"]
    scratch, source, forked = tmp_path / "scratch", tmp_path / "source", tmp_path / "forked"
    assert run_cli.main(tiny + ["--strategy", "gpm", "--out", str(scratch)]) == 0
    assert run_cli.main(tiny + ["--out", str(source)]) == 0  # the default recipe's remedies
    assert fork.main([str(source), str(forked), "--strategy", "gpm", "--gpm-positions", "16", "--no-progress"]) == 0
    ms, mf = (json.loads((d / "metrics.json").read_text()) for d in (scratch, forked))
    assert mf["strategy"] == ms["strategy"] == "gpm"
    assert mf["matrix"] == ms["matrix"]
    a, b = (torch.load(d / "model.pt", map_location="cpu", weights_only=False)["state_dict"] for d in (scratch, forked))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_plan_chooses_which_remedies_act(synthetic_root):
    """``"remedies"`` in a stage plan: the others stay idle in that stage (no penalty, no teacher
    pass) but keep their records for later stages (EWC's Fisher, gpm's bases)."""
    from strategies import build_remedies
    from strategies.remedies import LwFDistillation, OneHeadEWC

    built = build_remedies("ewc+lwf+gpm")
    built.act_in_stage(["gpm"])
    ewc, lwf, gpm = (next(p for p in built.plugins if isinstance(p, k))
                     for k in (OneHeadEWC, LwFDistillation, GradientProjection))
    assert (ewc.active, lwf.active, gpm.active) == (False, False, True)
    built.act_in_stage(["ewc", "lwf", "gpm"])
    assert ewc.active and lwf.active and gpm.active
    from avalanche_onehead.stage_plans import StagePlan

    assert StagePlan(remedies=["gpm"]).acting(["ewc", "lwf", "gpm"]) == ["gpm"]
    assert StagePlan().acting(["ewc", "lwf"]) == ["ewc", "lwf"]
    assert StagePlan(remedies=[]).acting(["ewc", "lwf", "gpm"]) == []  # an empty list: none acts
    assert StagePlan(train=["task_output"]).acting(["ewc", "lwf"]) == []  # nothing earlier can move there

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    stream = build_stream(synthetic_root, ["seg", "det", "cls"], 64, model.mean, model.std, max_images=4)
    built = build_remedies("ewc+lwf+gpm", RemedyOptions(ewc_lambda=1e5, gpm_positions=16))
    ewc, lwf, gpm = (next(p for p in built.plugins if isinstance(p, k))
                     for k in (OneHeadEWC, LwFDistillation, GradientProjection))
    strategy = _strategy(model, built.plugins)
    seg_exp, det_exp, cls_exp = stream.benchmark.train_stream
    built.act_in_stage(["ewc", "lwf"])
    strategy.train(seg_exp, drop_last=True, num_workers=0)
    strategy.train(det_exp, drop_last=True, num_workers=0)  # gpm idle: the seg rows of the output layer move
    assert lwf.last > 0 and gpm.stages == [0, 1]  # ...and yet it made the bases of both stages
    lwf.last = 0.0
    built.act_in_stage(["gpm"])
    seg_rows = model.output_slices()["seg"]
    before = model.head[-1].weight[seg_rows].clone()
    strategy.train(cls_exp, drop_last=True, num_workers=0)
    assert lwf.last == 0.0  # no distillation in the cls stage
    assert torch.equal(model.head[-1].weight[seg_rows], before)  # gpm held the earlier read-outs
    assert set(ewc.importances) == {0, 1, 2}  # EWC still estimated its Fisher after every stage


def test_an_idle_gpm_changes_nothing_in_its_stage(synthetic_root, run_cli, tmp_path, capsys, open_default_recipe):
    """gpm in the strategy but left out of the det stage's plan: seg and det train bit for bit as
    without it (its passes draw nothing from the stage's random stream), and its bases are made."""
    import json

    default, plans = open_default_recipe, open_default_recipe["plan"]
    without_gpm = {**default, "strategy": "ewc+lwf", "plan": plans}
    with_gpm = {**default, "strategy": "ewc+lwf+gpm",
                "plan": {**plans, "det": {**plans["det"], "remedies": ["ewc", "lwf"]}}}
    config, plain_config = tmp_path / "with-gpm.json", tmp_path / "without-gpm.json"
    config.write_text(json.dumps(with_gpm))
    plain_config.write_text(json.dumps(without_gpm))
    tiny = ["--data-root", str(synthetic_root), "--max-images", "6", "--image-size", "64", "--epochs", "1",
            "--workers", "0", "--no-progress", "--device", "cpu", "--tasks", "seg,det"]
    plain, idle = tmp_path / "plain", tmp_path / "idle"
    assert run_cli.main(tiny + ["--config", str(plain_config), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert run_cli.main(tiny + ["--config", str(config), "--gpm-positions", "16", "--out", str(idle)]) == 0
    console = capsys.readouterr().out
    assert "stage 2/2: det" in console and "remedies acting: ewc+lwf)" in console
    assert "gradient projection holds" in console  # its bases were made after seg
    mp, mi = (json.loads((d / "metrics.json").read_text()) for d in (plain, idle))
    assert mi["strategy"] == "ewc+lwf+gpm" and mi["matrix"] == mp["matrix"]
    a, b = (torch.load(d / "model.pt", map_location="cpu", weights_only=False)["state_dict"] for d in (plain, idle))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bases_no_later_stage_reads_are_not_made_again(synthetic_root, run_cli, tmp_path, capsys, open_default_recipe):
    """A resume whose stored bases cannot be used (a folder from before their options were stored)
    makes them again only when a stage still to train reads them: not when the last stage's plan
    leaves gpm out (and the run ends as its source did), yes when it projects."""
    import json

    from avalanche_onehead.commands import fork

    default, plans = open_default_recipe, open_default_recipe["plan"]
    recipe = {**default, "strategy": "ewc+lwf+gpm", "plan": {**plans, "cls": {**plans["cls"], "remedies": ["lwf"]}}}
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe))
    tiny = ["--data-root", str(synthetic_root), "--max-images", "6", "--image-size", "64", "--epochs", "1",
            "--workers", "0", "--no-progress", "--device", "cpu", "--gpm-positions", "16"]
    source = tmp_path / "source"
    assert run_cli.main(tiny + ["--config", str(config), "--out", str(source)]) == 0

    def older_fork(name: str, cls_remedies: str) -> str:
        folder = tmp_path / name
        assert fork.main([str(source), str(folder), "--after-stage", "2", "--plan", f"cls.remedies={cls_remedies}",
                          "--no-train", "--no-progress"]) == 0
        state = torch.load(folder / "resume.pt", map_location="cpu", weights_only=True)
        del state["remedies"]["gpm"]["made_with"]
        torch.save(state, folder / "resume.pt")
        capsys.readouterr()
        assert run_cli.main(["--resume", str(folder), "--no-progress"]) == 0
        return capsys.readouterr().out

    console = older_fork("idle", "lwf")
    assert "remedies acting: lwf)" in console
    assert "made again" not in console and "gradient projection holds" not in console
    ms, mf = (json.loads((d / "metrics.json").read_text()) for d in (source, tmp_path / "idle"))
    assert mf["matrix"] == ms["matrix"]
    console = older_fork("projecting", "lwf,gpm")
    assert "remedies acting: lwf+gpm)" in console and "made again" in console


def test_a_layer_threshold_of_its_own_holds_that_layer_more_or_not_at_all(synthetic_root):
    """``layer_thresholds``: the laterals (prefix ``neck.lateral``) at 0 keep no basis and move
    freely; the other convs hold what the run's threshold holds; a prefix that names no conv,
    or a threshold outside [0, 1], is refused before anything trains."""
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    stream = build_stream(synthetic_root, ["seg", "cls"], 64, model.mean, model.std, max_images=4)
    seg_exp = stream.benchmark.train_stream[0]
    plain = GradientProjection(threshold=0.99, positions=32)
    strategy = _strategy(model, [plain])
    strategy.train(seg_exp, drop_last=True, num_workers=0)
    free = GradientProjection(threshold=0.99, positions=32, layer_thresholds={"neck.lateral": 0.0, "head.1": 1.0})
    free.memorise(strategy, 0, seg_exp.dataset)
    for name, basis in free.bases.items():
        if name.startswith("neck.lateral."):
            assert basis.shape[1] == 0  # nothing held: every update passes unprojected
        elif name.startswith("head.1."):
            assert basis.shape[1] >= plain.bases[name].shape[1]  # all the energy: at least as much held
        else:
            assert basis.shape[1] == plain.bases[name].shape[1]
    assert free.made_with()["layer_thresholds"] == {"neck.lateral": 0.0, "head.1": 1.0}
    assert "layer_thresholds" not in plain.made_with()  # folders of before keep their bases
    delta = torch.randn(8, free.bases["neck.lateral.2"].shape[0])
    assert torch.equal(project_rows(delta, free.bases["neck.lateral.2"]), delta)
    with pytest.raises(ValueError, match="'neck.lateral.7' matches no conv"):
        GradientProjection(layer_thresholds={"neck.lateral.7": 0.0}).check_model(model)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        GradientProjection(layer_thresholds={"head": 1.5})


def test_a_layer_threshold_that_names_no_conv_stops_the_run_before_it_starts(synthetic_root, run_cli, tmp_path,
                                                                             capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run_cli.main(["--data-root", str(synthetic_root), "--strategy", "gpm", "--gpm-layer-thresholds",
                      "neck.later=0", "--max-images", "6", "--image-size", "64", "--epochs", "1", "--workers", "0",
                      "--no-progress", "--device", "cpu", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1 and "'neck.later' matches no conv" in err[0], err
    assert not out.exists()
