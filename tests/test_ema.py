"""The stage's weight EMA: the stage ends with the averaged weights, and every end-of-stage reader
(the remedies, the evaluation) sees those, not the last step's."""
from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin

from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from avalanche_onehead.plugins import StageEMA
from avalanche_onehead.stage_plans import StagePlan
from benchmarks import build_stream

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(SupervisedPlugin):
    """Keeps the weights after every step, and the weights a later plugin sees at the stage's end."""

    def __init__(self):
        super().__init__()
        self.steps, self.at_end = [], None

    def after_training_iteration(self, strategy, **kwargs):
        self.steps.append([p.detach().clone() for p in strategy.model.parameters()])

    def after_training_exp(self, strategy, **kwargs):
        self.at_end = [p.detach().clone() for p in strategy.model.parameters()]


def test_the_stage_ends_with_the_moving_average_of_its_steps(synthetic_root):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    start = [p.detach().clone() for p in model.parameters()]
    stream = build_stream(synthetic_root, ["cls"], 64, model.mean, model.std, max_images=6)
    ema, rec = StageEMA(0.5), Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        evaluator = EvaluationPlugin(loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=OneHeadCriterion(model.task_settings), train_mb_size=2, train_epochs=1,
                     eval_mb_size=2, device="cpu", plugins=[ema, rec], evaluator=evaluator, eval_every=-1)
    strategy.train(stream.benchmark.train_stream[0], num_workers=0)
    assert len(rec.steps) == 3
    # the average by hand, with timm's warm-up decay: step 1 takes the weights, later ones lerp
    want = [w.clone() for w in start]
    for k, weights in enumerate(rec.steps, start=1):
        decay = min(0.5, 1 - (1 + (k - 1)) ** -0.75) if k > 1 else 0.0
        want = [torch.lerp(a, w, 1 - decay) for a, w in zip(want, weights)]
    for got, avg, last in zip(rec.at_end, want, rec.steps[-1]):
        torch.testing.assert_close(got, avg)
    assert any(not torch.equal(a, b) for a, b in zip(rec.at_end, rec.steps[-1]))  # not the last step's
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), rec.at_end))


def test_plan_takes_a_decay_below_one():
    assert StagePlan().ema_decay == 0.0
    with pytest.raises(ValueError, match="ema_decay"):
        StagePlan(ema_decay=1.0)
