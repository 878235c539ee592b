"""The pretrained-feature anchor: its loss on hand-made maps, and that the plugin pulls towards
the model as built, in every stage, and resumes towards the same weights: on live images, and
through the run command on the frozen-feature cache."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin

from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from benchmarks import build_stream
from strategies import RemedyOptions, build_plugins
from strategies.anchor import PretrainedAnchor, pooled_anchor_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pooled_loss_compares_image_level_means_only():
    a = torch.randn(2, 3, 4, 4)
    assert pooled_anchor_loss(a, a.clone()) == 0
    # the same mean per channel, another spatial layout: no pull
    assert pooled_anchor_loss(a.flip(-1).roll(1, -2), a) == pytest.approx(0, abs=1e-12)
    ones, zeros = torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    zeros[0, 1] = 3.0  # pooled: (1, 1) vs (0, 3) -> ((1-0)^2 + (1-3)^2) / 2 = 2.5
    assert float(pooled_anchor_loss(ones, zeros)) == pytest.approx(2.5)


class Tap(SupervisedPlugin):
    """Records the anchor's penalty of every iteration (it runs after the anchor)."""

    def __init__(self, anchor: PretrainedAnchor):
        super().__init__()
        self.anchor, self.rows = anchor, []

    def before_backward(self, strategy, **kwargs):
        self.rows.append((strategy.clock.train_exp_counter, self.anchor.last))


def test_anchor_pulls_towards_the_initial_model_in_every_stage(synthetic_root):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    built = {k: v.clone() for k, v in model.state_dict().items()}
    stream = build_stream(synthetic_root, ["seg", "det"], 64, model.mean, model.std, max_images=4)
    (anchor,) = build_plugins("anchor", RemedyOptions(anchor_weight=2.0))
    assert anchor.weight == 2.0
    tap = Tap(anchor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        evaluator = EvaluationPlugin(loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                     criterion=OneHeadCriterion(model.task_settings), train_mb_size=2, train_epochs=1,
                     eval_mb_size=2, device="cpu", plugins=[anchor, tap], evaluator=evaluator, eval_every=-1)
    for exp in stream.benchmark.train_stream:
        strategy.train(exp, drop_last=True, num_workers=0)
    first = [p for e, p in tap.rows if e == 0]
    second = [p for e, p in tap.rows if e == 1]
    assert first[0] == 0.0  # the student is the initial model at step 0
    assert first[-1] > 0 and all(p > 0 for p in second)  # it pulls once the weights moved, in stage 2 too
    # the anchor is the model as built, not the one of the end of stage 1
    assert all(torch.equal(v, built[k]) for k, v in anchor.initial.state_dict().items())
    assert any(not torch.equal(v, built[k]) for k, v in model.state_dict().items())

    resumed = PretrainedAnchor()
    resumed.restore(anchor.resume_state(), strategy, finished=list(stream.benchmark.train_stream))
    resumed.before_training_exp(strategy)  # the run goes on with a trained model...
    # ...and the anchor still holds the weights the run started from
    assert all(torch.equal(v, built[k]) for k, v in resumed.initial.state_dict().items())


def test_resuming_a_run_trained_without_the_anchor_is_refused():
    with pytest.raises(ValueError, match="without 'anchor'"):
        PretrainedAnchor().restore({}, None, finished=["stage 1"])
    fresh = PretrainedAnchor()
    fresh.restore({}, None, finished=[])  # nothing finished yet: the anchor is taken at the start
    assert fresh.initial is None


def test_in_a_cached_run_the_anchor_pulls_in_stage_2_and_a_resumed_run_keeps_its_weights(
        synthetic_root, tmp_path, run_cli, capsys):
    """The run command with the frozen-feature cache (frozen backbone, cached views): the anchor
    reads cached features, pulls in every step of stage 2, and a run stopped at the start of
    stage 2 and resumed anchors to the same weights as the run that went through, not to the
    model it resumes from."""
    from avalanche_onehead.checkpoint import read_checkpoint
    from avalanche_onehead.feature_cache import BackboneFeatures

    cfg = tmp_path / "recipe.json"
    frozen = {"train": ["neck", "head", "output"], "views": 1}
    cfg.write_text(json.dumps({"strategy": "anchor", "epochs": {"seg": 1, "det": 1}, "lr": 1e-3,
                               "seg_loss_stride": 2, "remedy": {"anchor_weight": 2.0},
                               "plan": {"seg": frozen, "det": frozen}}))
    args = ["--config", str(cfg), "--data-root", str(synthetic_root), "--tasks", "seg,det", "--max-images", "6",
            "--image-size", "64", "--batch-size", "2", "--workers", "0", "--no-progress"]
    seen: list[tuple[int, float, bool]] = []  # (stage, penalty, the step read cached features)
    anchors: dict[int, dict[str, torch.Tensor]] = {}  # the anchor's weights, at each stage's first step
    stop = {"in stage 2": False}
    original = PretrainedAnchor.before_backward

    def tap(self, strategy, **kwargs):
        stage = strategy.experience.current_experience
        if stop["in stage 2"] and stage == 1:
            raise KeyboardInterrupt
        original(self, strategy, **kwargs)
        seen.append((stage, self.last, isinstance(strategy.mb_x, BackboneFeatures)))
        anchors.setdefault(stage, {k: v.clone() for k, v in self.initial.state_dict().items()})

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PretrainedAnchor, "before_backward", tap)
        assert run_cli.main([*args, "--out", str(full)]) == 0
        went_through, anchors_full = list(seen), dict(anchors)
        seen.clear()
        anchors.clear()
        assert all(cached for _, _, cached in went_through)
        stage2 = [p for stage, p, _ in went_through if stage == 1]
        assert stage2 and all(p > 0 for p in stage2)  # it pulls in every step of stage 2
        assert all(torch.equal(anchors_full[0][k], v) for k, v in anchors_full[1].items())  # the same anchor

        stop["in stage 2"] = True
        with pytest.raises(SystemExit) as e:
            run_cli.main([*args, "--out", str(stopped)])
        assert e.value.code == 130 and (stopped / "resume.pt").is_file()
        stop["in stage 2"] = False
        seen.clear()
        anchors.clear()
        capsys.readouterr()
        assert run_cli.main(["--resume", str(stopped), "--no-progress"]) == 0
    assert [stage for stage, _, _ in seen] == [1] * len(stage2)  # only stage 2 was trained again
    assert all(torch.equal(anchors_full[1][k], v) for k, v in anchors[1].items())
    assert [p for _, p, _ in seen] == pytest.approx(stage2, rel=1e-4)
    resumed_from = read_checkpoint(stopped / "stage1_seg.pt")["state_dict"]
    assert any(not torch.equal(resumed_from[k], v) for k, v in anchors[1].items())  # not the model after stage 1
