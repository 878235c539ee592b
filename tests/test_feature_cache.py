"""The frozen-feature cache and per-stage plans: a cached step equals a live frozen step, plans
freeze what they say, the head warm-up moves only the new task's output channels, and a kept
cache is reused with the same results."""
from __future__ import annotations

import avalanche_onehead.commands.run
from avalanche_onehead import commands

import copy
import json
from pathlib import Path

import pytest
import torch

from avalanche_onehead.checkpoint import read_checkpoint
from avalanche_onehead.feature_cache import BackboneFeatures, build_cache
from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from avalanche_onehead.stage_plans import (StagePlan, apply_plan, param_groups, part_of, resolve_plans, tail_prefixes,
                                          trains_tail, uses_cache)
from avalanche_onehead.targets import collate_onehead
from benchmarks import JointTransform, load_split
from stage_checks import assert_only_own_rows_moved

SIZE = 64
FROZEN = {"train": ["neck", "head", "output"]}


def _images(root, task: str, n: int = 4):
    model = create_model(pretrained=False)
    ds = load_split(root, task, "train", JointTransform(SIZE, train=False, mean=model.mean, std=model.std))
    ds.samples = ds.samples[:n]
    return ds


def _one_step(model, x, y, plan):
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 0.3, 1e-4, plan=plan))
    loss = OneHeadCriterion()(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return float(loss.detach()), grads


def test_a_step_on_cached_features_equals_the_step_on_live_frozen_features(synthetic_root, one_thread):
    """float32 cache: the same AdamW step; float16 storage: the same loss and gradient directions
    up to its rounding (an Adam step normalises tiny gradients to +-lr, so weights are not compared)."""
    torch.manual_seed(0)
    live = create_model(pretrained=False)
    models = {"live": live, torch.float32: copy.deepcopy(live), torch.float16: copy.deepcopy(live)}
    plan = StagePlan(**FROZEN)
    for m in models.values():
        apply_plan(m, plan)
        m.train()
    ds = _images(synthetic_root, "seg")
    x_live, y, _ = collate_onehead([(*ds[i], 0) for i in range(len(ds))])
    steps = {"live": _one_step(live, x_live, y, plan)}
    for dtype in (torch.float32, torch.float16):
        views = build_cache(models[dtype].backbone, [ds], seed=0, dtype=dtype)
        x, y2, _ = collate_onehead([(*views[i], 0) for i in range(len(views))])
        assert isinstance(x, BackboneFeatures) and len(x) == len(ds)
        assert torch.equal(y["seg"].target, y2["seg"].target)
        steps[dtype] = _one_step(models[dtype], x, y2, plan)
    for (name, a), b in zip(live.named_parameters(), models[torch.float32].parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), name
    loss16, grads16 = steps[torch.float16]
    assert loss16 == pytest.approx(steps["live"][0], rel=1e-3)
    assert set(grads16) == set(steps["live"][1]) and grads16  # neck + head only
    for name, g in steps["live"][1].items():
        assert torch.nn.functional.cosine_similarity(g.flatten(), grads16[name].flatten(), dim=0) > 0.999, name
    # the frozen backbone got no gradient and did not move
    assert all(p.grad is None for p in live.backbone.parameters())


TAIL = {"train": ["tail", "neck", "head", "output"]}


def test_a_step_that_trains_the_last_stage_on_cached_features_equals_the_live_step(synthetic_root, one_thread):
    """With ``live_tail`` the model recomputes the deepest map from the cached second-deepest one
    through its own last stage: the same loss, the same gradients for the last stage, neck and head
    as the whole network on images, and no gradient for the rest of the backbone.  After the last
    stage has moved, the cached deepest map is stale, and a pass that still read it would differ."""
    torch.manual_seed(0)
    live = create_model(pretrained=False)
    cached = copy.deepcopy(live)
    plan = StagePlan(**TAIL)
    for m in (live, cached):
        apply_plan(m, plan)
        m.train()
    cached.live_tail = True
    ds = _images(synthetic_root, "det")
    x_live, y, _ = collate_onehead([(*ds[i], 0) for i in range(len(ds))])
    views = build_cache(cached.backbone, [ds], seed=0, dtype=torch.float32)
    x, y2, _ = collate_onehead([(*views[i], 0) for i in range(len(views))])
    (loss_a, grads_a), (loss_b, grads_b) = _one_step(live, x_live, y, plan), _one_step(cached, x, y2, plan)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    tail = {n for n in grads_a if part_of(n, live, tail_prefixes(live, plan)) == "tail"}
    assert tail and {n.split(".")[0] for n in grads_a} == {"backbone", "neck", "head"}
    assert set(grads_a) == set(grads_b) and all(n.startswith(("neck.", "head.")) for n in set(grads_a) - tail)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-5, rtol=1e-3), name
    # the step moved the last stage: a pass on the cache now needs it recomputed
    with torch.no_grad():
        cached.eval()
        now = cached(x)
        cached.live_tail = False
        stale = cached(x)
    assert not torch.allclose(now["det"], stale["det"], atol=1e-4)


def test_the_last_stage_is_a_part_of_its_own():
    model = create_model(pretrained=False)
    names = [n for n, _ in model.last_stage()]
    assert names == ["blocks.5", "blocks.6"]  # Lite0: stride-16 map (blocks.4) -> stride-32 map (blocks.6)
    apply_plan(model, StagePlan(**TAIL))
    moving = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in moving if n.startswith("backbone.")} == {
        n for n, _ in model.named_parameters() if n.startswith(("backbone.blocks.5.", "backbone.blocks.6."))}
    groups = {g["name"]: g["lr"] for g in param_groups(model, 1e-3, 0.3, 1e-4, plan=StagePlan(**TAIL))}
    assert groups["tail"] == pytest.approx(3e-4) and groups["neck"] == pytest.approx(1e-3)  # the backbone's lr
    assert not model.backbone.training  # BatchNorm of the last stage keeps its ImageNet statistics
    assert "tail" in StagePlan().parts  # the whole backbone includes its last stage
    plans = resolve_plans({"seg": FROZEN, "det": TAIL}, ["seg", "det"])
    assert uses_cache(plans) and trains_tail(plans)
    assert not trains_tail(resolve_plans({"seg": FROZEN, "det": FROZEN}, ["seg", "det"]))
    assert not trains_tail(resolve_plans({"seg": FROZEN}, ["seg", "det"]))  # det moves the whole backbone


def test_cache_views_are_seeded_and_distinct(synthetic_root, one_thread):
    model = create_model(pretrained=False)
    aug = load_split(synthetic_root, "det", "train", JointTransform(SIZE, train=True, mean=model.mean, std=model.std))
    aug.samples = aug.samples[:3]
    a = build_cache(model.backbone, [aug, aug], seed=1)
    b = build_cache(model.backbone, [aug, aug], seed=1)
    assert len(a) == 6 and a.source_index == [0, 1, 2, 0, 1, 2]
    assert all(torch.equal(x, y) for x, y in zip(a.maps, b.maps))  # same seed: the same views
    assert not torch.equal(a.maps[0][:3], a.maps[0][3:])  # two augmentations of the same images differ
    assert a.nbytes() > 0


def test_plans_validate_and_decide_the_cache():
    with pytest.raises(ValueError, match="parts among"):
        StagePlan(train=["neck", "wings"])
    with pytest.raises(ValueError, match="views"):
        StagePlan(views=0)
    with pytest.raises(ValueError, match="unknown stage plan setting"):
        StagePlan.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="unknown task"):
        resolve_plans({"depth": {}}, ["seg", "det"])
    assert list(resolve_plans({"seg": FROZEN, "cls": FROZEN}, ["cls"])) == ["cls"]  # a single-task run
    plans = resolve_plans({"seg": FROZEN}, ["seg", "det"])
    assert plans["det"].train == ["backbone", "neck", "head", "output"]
    assert not uses_cache(plans)
    assert uses_cache(resolve_plans({"seg": FROZEN, "det": FROZEN}, ["seg", "det"]))
    own = StagePlan(train=["task_output"])
    assert own.parts == ["output"] and own.warmup_epochs(7) == 7 and StagePlan(head_warmup_epochs=2).warmup_epochs(7) == 2
    assert uses_cache(resolve_plans({"seg": FROZEN, "det": {"train": ["task_output"]}}, ["seg", "det"]))
    with pytest.raises(ValueError, match="alone"):
        StagePlan(train=["task_output", "neck"])
    with pytest.raises(ValueError, match="mosaic_views"):  # the first view is always the plain resize
        StagePlan(views=2, mosaic_views=2)
    with pytest.raises(ValueError, match="one label per image"):
        resolve_plans({"cls": {"views": 2, "mosaic_views": 1}}, ["cls"])
    assert resolve_plans({"seg": {"views": 3, "mosaic_views": 2}}, ["seg"])["seg"].mosaic_views == 2


def test_apply_plan_freezes_the_parts_it_does_not_name():
    model = create_model(pretrained=False)
    apply_plan(model, StagePlan(train=["output"]))
    model.train()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    assert all(p.requires_grad == n.startswith(f"head.{len(model.head) - 1}.") for n, p in model.named_parameters())
    assert not model.backbone.training  # a frozen backbone computes what the cache holds
    groups = param_groups(model, 1e-3, 0.3, 1e-4, plan=StagePlan(train=["output"]))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # every parameter in a group
    assert {g["name"]: g["lr"] for g in groups}["frozen-no-decay"] == 0.0


def _run(tmp: Path, root, plan: dict, extra: list[str] = ()) -> Path:
    cfg = tmp / f"cfg-{len(list(tmp.iterdir()))}.json"
    cfg.write_text(json.dumps({"strategy": "lwf", "epochs": {"seg": 1, "det": 1}, "lr": 1e-3, "plan": plan,
                               "seg_loss_stride": 2}))
    out = tmp / f"run-{len(list(tmp.iterdir()))}"
    argv = ["--config", str(cfg), "--data-root", str(root), "--tasks", "seg,det", "--max-images", "8",
            "--image-size", str(SIZE), "--workers", "0", "--no-progress", "--out", str(out), *extra]
    assert commands.run.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def cache_runs(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache-runs")
    plan = {"seg": {**FROZEN, "views": 2}, "det": {**FROZEN, "views": 2, "mosaic_views": 1, "head_warmup_epochs": 1}}
    keep = tmp / "features"
    first = _run(tmp, synthetic_root, plan, ["--cache-dir", str(keep)])
    second = _run(tmp, synthetic_root, plan, ["--cache-dir", str(keep)])
    return first, second


def test_a_cached_run_records_its_plan_and_the_head_warmup_moves_only_the_new_task(cache_runs):
    first, _ = cache_runs
    m = json.loads((first / "metrics.json").read_text())
    assert m["plan"]["det"]["head_warmup_epochs"] == 1 and m["plan"]["seg"]["views"] == 2
    assert m["plan"]["det"]["mosaic_views"] == 1 and m["plan"]["seg"]["mosaic_views"] == 0
    assert m["cache_seconds"] > 0 and m["train_seconds"] >= m["cache_seconds"]
    before = read_checkpoint(first / "stage1_seg.pt")["state_dict"]
    after = read_checkpoint(first / "stage2_det.pt")["state_dict"]
    model = create_model(pretrained=False)
    det = model.output_slices()["det"]
    last = f"head.{len(model.head) - 1}."
    for name, w in before.items():
        if name.startswith(last):  # the output layer: only the detection rows moved
            rows = torch.zeros(w.shape[0], dtype=torch.bool)
            rows[det] = True
            assert torch.equal(w[~rows], after[name][~rows]), name
            assert not torch.equal(w[rows], after[name][rows]), name
        else:  # one epoch, all of it the warm-up: nothing else moved, the backbone never does
            assert torch.equal(w, after[name]), name


def test_a_cached_run_that_trains_the_last_stage_is_scored_like_its_checkpoint_on_images(synthetic_root, tmp_path):
    """Detection trains the backbone's last stage behind the cache: the rest of the backbone
    stays exactly as it was, the last stage moves, and the run's scores (on cached validation
    features, the deepest map recomputed) equal its checkpoint's on the images themselves."""
    from avalanche_onehead.checkpoint import load_checkpoint
    from avalanche_onehead.evaluation import evaluate_dataset

    out = _run(tmp_path, synthetic_root, {"seg": {**FROZEN, "views": 2}, "det": {**TAIL, "views": 2}})
    m = json.loads((out / "metrics.json").read_text())
    assert m["plan"]["det"]["train"] == TAIL["train"] and m["cache_seconds"] > 0
    before = read_checkpoint(out / "stage1_seg.pt")["state_dict"]
    after = read_checkpoint(out / "model.pt")["state_dict"]
    tail = ("backbone.blocks.5.", "backbone.blocks.6.")
    backbone = [n for n in before if n.startswith("backbone.")]
    assert all(torch.equal(before[n], after[n]) for n in backbone if not n.startswith(tail))
    assert any(not torch.equal(before[n], after[n]) for n in backbone if n.startswith(tail))
    model, _ = load_checkpoint(out / "model.pt")
    for task in ("seg", "det"):
        ds = load_split(synthetic_root, task, "val", JointTransform(SIZE, train=False, mean=model.mean, std=model.std))
        ds.samples = ds.samples[:8]  # the run's --max-images
        score = evaluate_dataset(model, ds, task, progress=False)[m["metric_names"][task]]
        assert score == pytest.approx(m["final"][task], abs=1e-4), task


def test_a_task_output_stage_moves_only_its_own_output_channels_in_every_epoch(synthetic_root, tmp_path, capsys):
    """``train: ["task_output"]``: two epochs of detection under LwF and EWC, and nothing but
    detection's rows of the output layer moved, so segmentation's row of the matrix cannot drop."""
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"strategy": "ewc+lwf", "epochs": {"seg": 1, "det": 2}, "lr": 1e-3,
                               "seg_loss_stride": 2, "remedy": {"ewc_lambda": 100.0},
                               "plan": {"seg": {**FROZEN, "views": 2}, "det": {"train": ["task_output"]}}}))
    out = tmp_path / "run"
    assert commands.run.main(
        ["--config", str(cfg), "--data-root", str(synthetic_root), "--tasks", "seg,det", "--max-images", "8",
         "--image-size", str(SIZE), "--workers", "0", "--no-progress", "--out", str(out)]) == 0
    assert_only_own_rows_moved(out / "stage1_seg.pt", out / "stage2_det.pt", "det")
    m = json.loads((out / "metrics.json").read_text())
    assert m["matrix"][1][0] == m["matrix"][0][0] and m["plan"]["det"]["train"] == ["task_output"]
    # nothing earlier can move, so neither EWC's penalty nor LwF's teacher pass is paid
    assert "det (2 epochs; trains its own output channels only; remedies acting: none)" in capsys.readouterr().out


def test_a_kept_cache_is_reused_with_the_same_results(cache_runs):
    first, second = cache_runs
    a = json.loads((first / "metrics.json").read_text())
    b = json.loads((second / "metrics.json").read_text())
    assert a["matrix"] == b["matrix"]
    assert len(list((second.parent / "features").glob("*.pt"))) == 4  # seg/det x train/val


def test_a_cached_run_stopped_inside_a_stage_resumes_to_the_same_weights(synthetic_root, tmp_path, capsys):
    """The default recipe's shape (frozen backbone, cached views, head warm-up, ewc+lwf, weight
    EMA; a mosaic view) stopped in the middle of its second stage, after that stage's warm-up
    epoch: resuming rebuilds the cache (the same seeded views, mosaics included), puts the EMA
    back, and ends where the uninterrupted run ends."""
    from avalanche_onehead.plugins import WarmupCosinePlugin

    run = commands.run
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({
        "strategy": "ewc+lwf", "epochs": {"seg": 1, "det": 2}, "lr": 1e-3, "seg_loss_stride": 2,
        "remedy": {"ewc_lambda": 100.0, "lwf_task_weights": {"seg": 2.0}},
        "plan": {"seg": {**FROZEN, "views": 2},
                 "det": {**FROZEN, "views": 3, "mosaic_views": 1, "head_warmup_epochs": 1, "ema_decay": 0.9}}}))
    args = ["--config", str(cfg), "--data-root", str(synthetic_root), "--tasks", "seg,det", "--max-images", "6",
            "--image-size", str(SIZE), "--batch-size", "4", "--workers", "0", "--no-progress"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert run.main([*args, "--out", str(full)]) == 0
    original = WarmupCosinePlugin.after_training_iteration

    def stop(self, strategy, **kwargs):
        if strategy.experience.current_experience == 1 and strategy.clock.train_exp_epochs == 1:
            raise KeyboardInterrupt
        return original(self, strategy, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WarmupCosinePlugin, "after_training_iteration", stop)
        with pytest.raises(SystemExit) as e:
            run.main([*args, "--out", str(stopped)])
    assert e.value.code == 130
    assert (stopped / "resume_epoch.pt").is_file() and (stopped / "resume.pt").is_file()
    # the same folder with the EMA taken out of the unfinished stage's plan is refused, in one line
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(stopped, edited)
    config = json.loads((edited / "config.json").read_text())
    config["plan"]["det"]["ema_decay"] = 0.0
    (edited / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run.main(["--resume", str(edited), "--no-progress"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weight EMA" in err[0] and "ema_decay 0" in err[0]
    assert run.main(["--resume", str(stopped), "--no-progress"]) == 0
    assert "in stage 2 (det) after epoch 1/2" in capsys.readouterr().out
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((stopped / "metrics.json").read_text())
    for row_a, row_b in zip(a["matrix"], b["matrix"], strict=True):
        assert row_b == pytest.approx(row_a, abs=1e-6)
    sa = read_checkpoint(full / "model.pt")["state_dict"]
    sb = read_checkpoint(stopped / "model.pt")["state_dict"]
    assert max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel()) <= 1e-6
