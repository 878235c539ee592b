"""The pretrained-feature anchor: its loss on hand-made maps, and that the plugin pulls towards
the model as built, in every stage, and resumes towards the same weights."""
from __future__ import annotations

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
