"""Forgetting remedies: strategy composition, and that EWC, replay, LwF and KD really act.

The behavioural tests drive Avalanche's ``Naive`` strategy directly, the way
``training.run`` does, with every remedy of ``build_plugins("ewc+replay+lwf+kd")``
at once over the three-task synthetic stream (64 px, 4 images per split, batches
of 2), and small probe plugins between the remedies that record what happens.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin

from avalanche_onehead.detection import BOX_CHANNELS
from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from avalanche_onehead.tasks import TASKS
from avalanche_onehead.tasks.cls import cls_distillation
from avalanche_onehead.tasks.det import det_distillation
from avalanche_onehead.tasks.seg import seg_distillation
from benchmarks import build_stream
from strategies import REMEDIES, RemedyOptions, build_plugins, canonical, parse_strategy
from avalanche_onehead.rules import MAX_REPLAY_PER_TASK_PER_STEP
from strategies.remedies import (
    FeatureKD,
    LwFDistillation,
    OneHeadEWC,
    PreviousModel,
    TaskBudgetReplay,
)

REPO = Path(__file__).resolve().parents[1]
KNOWN = list(REMEDIES)
ORDER = ["seg", "det", "cls"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _lists_known(message: str) -> bool:
    return all(name in message for name in KNOWN)


# ---------------------------------------------------------------------------------------------
# composition: names, order, errors, shared teacher
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [("replay+ewc", "ewc+replay"), ("lwf+kd+ewc", "ewc+kd+lwf"),
                                  (" EWC + Replay ", "replay+ewc")])
def test_composition_is_order_independent(a, b):
    assert canonical(a) == canonical(b)
    assert sorted(parse_strategy(a)) == sorted(parse_strategy(b))
    assert canonical("replay+ewc") == "ewc+replay"  # registry order, whatever the spelling
    assert canonical("kd+lwf+replay+ewc") == "ewc+replay+lwf+kd"
    assert canonical("naive") == "naive"
    assert parse_strategy(" EWC + Replay ") == ["ewc", "replay"]


@pytest.mark.parametrize("spec, needle", [("foo", "'foo'"), ("ewc+foo", "'foo'"), ("ewc+ewc", "twice"),
                                          ("replay+EWC+ewc", "twice")])
def test_unknown_or_repeated_names_list_the_known_remedies(spec, needle):
    with pytest.raises(ValueError) as e:
        parse_strategy(spec)
    msg = str(e.value)
    assert needle in msg and _lists_known(msg), msg
    with pytest.raises(ValueError):
        canonical(spec)
    with pytest.raises(ValueError):
        build_plugins(spec)


@pytest.mark.parametrize("spec", ["", "   ", "ewc+", "+ewc", "ewc++replay", "ewc+ +replay"])
def test_empty_pieces_are_rejected(spec):
    with pytest.raises(ValueError) as e:
        parse_strategy(spec)
    assert _lists_known(str(e.value))


@pytest.mark.parametrize("spec", ["naive+ewc", "replay+naive"])
def test_naive_cannot_be_combined(spec):
    with pytest.raises(ValueError, match="naive"):
        parse_strategy(spec)


def test_build_plugins_shares_one_teacher_placed_first():
    for spec in ("kd+lwf", "lwf+kd", "kd+replay+lwf+ewc"):
        plugins = build_plugins(spec)
        teachers = [p for p in plugins if isinstance(p, PreviousModel)]
        assert len(teachers) == 1 and plugins[0] is teachers[0], spec
        lwf = next(p for p in plugins if isinstance(p, LwFDistillation))
        kd = next(p for p in plugins if isinstance(p, FeatureKD))
        assert lwf.teacher is plugins[0] and kd.teacher is plugins[0]
    full = build_plugins("kd+replay+lwf+ewc")
    assert [type(p) for p in full] == [PreviousModel, OneHeadEWC, TaskBudgetReplay, LwFDistillation, FeatureKD]
    assert [type(p) for p in build_plugins("ewc+replay")] == [OneHeadEWC, TaskBudgetReplay]
    assert not any(isinstance(p, PreviousModel) for p in build_plugins("ewc+replay"))
    assert build_plugins("naive") == []
    # two strategies never share a teacher
    assert build_plugins("lwf")[0] is not build_plugins("lwf")[0]


def test_options_reach_the_plugins():
    o = RemedyOptions(ewc_lambda=7.0, ewc_mode="online", ewc_decay=0.5, replay_mem_per_task=4,
                      replay_per_step=3, lwf_alpha=0.25, lwf_temperature=3.0, kd_weight=0.5, num_tasks=2)
    prev, ewc, replay, lwf, kd = build_plugins("ewc+replay+lwf+kd", o)
    assert (ewc.ewc_lambda, ewc.mode, ewc.decay_factor) == (7.0, "online", 0.5)
    assert (replay.mem_per_task, replay.per_step, replay.storage_policy.max_size) == (4, 3, 8)
    assert (lwf.alpha, lwf.temperature, kd.weight) == (0.25, 3.0, 0.5)
    separate = build_plugins("ewc", RemedyOptions(ewc_decay=0.5))[0]
    assert separate.mode == "separate" and separate.decay_factor is None
    with pytest.raises(ValueError, match="ewc_mode"):
        build_plugins("ewc", RemedyOptions(ewc_mode="sideways"))


def test_remedy_options_from_dict():
    o = RemedyOptions.from_dict({"ewc_lambda": 5.0, "replay_per_step": 4})
    assert (o.ewc_lambda, o.replay_per_step, o.lwf_alpha) == (5.0, 4, RemedyOptions().lwf_alpha)
    with pytest.raises(ValueError) as e:
        RemedyOptions.from_dict({"ewc_lamda": 5.0, "bogus": 1})
    msg = str(e.value)
    assert "ewc_lamda" in msg and "bogus" in msg and "ewc_lambda" in msg  # names the known ones


def test_list_strategies_prints_one_line_per_remedy(run_cli, capsys):
    assert run_cli.main(["--list-strategies"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == len(REMEDIES)
    assert [ln.split()[0] for ln in lines] == KNOWN
    for ln, r in zip(lines, REMEDIES.values()):
        assert r.summary in ln


def test_unknown_strategy_on_the_command_line_is_one_error_line(synthetic_root, tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "--strategy", "foo",
                           "--data-root", str(synthetic_root), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("error:") and "'foo'" in err[0] and _lists_known(err[0])
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # failed before anything was written


# ---------------------------------------------------------------------------------------------
# replay arguments
# ---------------------------------------------------------------------------------------------

def test_replay_budget_is_enforced():
    with pytest.raises(ValueError) as e:
        TaskBudgetReplay(per_step=MAX_REPLAY_PER_TASK_PER_STEP + 1)
    assert "11" in str(e.value) and str(MAX_REPLAY_PER_TASK_PER_STEP) in str(e.value)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="per_step"):
            TaskBudgetReplay(per_step=bad)
    with pytest.raises(ValueError, match="smaller than per_step"):
        TaskBudgetReplay(mem_per_task=2, per_step=3)
    with pytest.raises(ValueError):
        build_plugins("replay", RemedyOptions(replay_per_step=11))
    ok = TaskBudgetReplay(mem_per_task=10, per_step=10, num_tasks=3)
    assert ok.storage_policy.max_size == 30 and ok.storage_policy.get_group_lengths(3) == [10, 10, 10]


# ---------------------------------------------------------------------------------------------
# distillation functions
# ---------------------------------------------------------------------------------------------

def test_seg_and_cls_distillation_vanish_only_at_the_teacher():
    g = torch.Generator().manual_seed(0)
    seg = torch.randn(2, 21, 8, 8, generator=g)
    cls = torch.randn(4, 10, generator=g)
    for fn, t in ((seg_distillation, seg), (cls_distillation, cls)):
        for temp in (1.0, 2.0):
            assert abs(float(fn(t.clone(), t, temp))) < 1e-5
            # softmax is shift-invariant: a constant added per location changes nothing
            assert abs(float(fn(t + 3.0, t, temp))) < 1e-5
            assert float(fn(t + torch.randn(t.shape, generator=g), t, temp)) > 1e-3
        s = t.clone().requires_grad_(True)
        fn(s, t, 2.0).backward()
        assert s.grad.abs().max() < 1e-6  # a minimum at the teacher


def test_det_distillation_minimal_at_the_teacher_and_box_terms_only_where_confident():
    g = torch.Generator().manual_seed(1)
    c = TASKS["det"].num_classes
    t = torch.randn(2, c + BOX_CHANNELS, 8, 8, generator=g)
    at = det_distillation(t.clone(), t, 0.3)
    s = t.clone().requires_grad_(True)
    det_distillation(s, t, 0.3).backward()
    assert s.grad.abs().max() < 1e-6  # minimum at equality (soft BCE + box terms)
    for _ in range(3):
        assert float(det_distillation(t + 0.5 * torch.randn(t.shape, generator=g), t, 0.3)) > float(at) + 1e-4

    # teacher unsure everywhere: the student's box / centre-ness channels do not matter
    unsure = t.clone()
    unsure[:, :c] = -8.0
    moved = unsure.clone()
    moved[:, c:] += 5.0
    assert float(det_distillation(moved, unsure, 0.3)) == pytest.approx(float(det_distillation(unsure, unsure, 0.3)))

    # teacher confident at one location: box terms act there, and only there
    sure = unsure.clone()
    sure[0, 3, 2, 5] = 6.0
    base = float(det_distillation(sure, sure, 0.3))
    there, elsewhere = sure.clone(), sure.clone()
    there[0, c:c + 4, 2, 5] += 2.0
    elsewhere[0, c:c + 4, 4, 1] += 2.0
    assert float(det_distillation(there, sure, 0.3)) > base + 0.5
    assert float(det_distillation(elsewhere, sure, 0.3)) == pytest.approx(base)


# ---------------------------------------------------------------------------------------------
# LwF / KD on a hand-built strategy state: gradients reach the shared layers
# ---------------------------------------------------------------------------------------------

def _grad_sum(params) -> float:
    return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))


@pytest.fixture(scope="module")
def student_and_teacher():
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    prev = PreviousModel()
    prev.snapshot.model = copy.deepcopy(model).eval().requires_grad_(False)  # as PreviousModel takes it
    prev.snapshot.trained = ["seg", "det"]
    with torch.no_grad():  # the student has moved on since the teacher was taken
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.train(), prev


def _fake_strategy(model, task: str, iteration: int):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(iteration))
    model.zero_grad(set_to_none=True)
    return SimpleNamespace(mb_x=x, mb_output=model(x),
                           experience=SimpleNamespace(task_labels=[TASKS[task].label]),
                           clock=SimpleNamespace(train_iterations=iteration))


def test_lwf_penalty_distils_earlier_tasks_through_the_shared_layers(student_and_teacher):
    model, prev = student_and_teacher
    lwf = LwFDistillation(prev, alpha=1.0, temperature=2.0)
    strategy = _fake_strategy(model, "cls", 1)
    assert prev.earlier_tasks(strategy) == ["seg", "det"]
    p = lwf.penalty(strategy)
    assert p is not None and float(p.detach()) > 0
    p.backward()
    assert _grad_sum(model.backbone.parameters()) > 0
    assert _grad_sum(model.neck.parameters()) > 0
    out = model.head[-1].weight.grad
    sl = model.output_slices()
    assert out[sl["seg"]].abs().sum() > 0 and out[sl["det"]].abs().sum() > 0
    assert out[sl["cls"]].abs().sum() == 0  # the current task's outputs are not distilled

    # only what the teacher learned and is not the current task is distilled
    strategy = _fake_strategy(model, "det", 2)
    assert prev.earlier_tasks(strategy) == ["seg"]
    lwf.penalty(strategy).backward()
    out = model.head[-1].weight.grad
    assert out[sl["seg"]].abs().sum() > 0
    assert out[sl["det"]].abs().sum() == 0 and out[sl["cls"]].abs().sum() == 0


def test_kd_penalty_pulls_neck_features_only(student_and_teacher):
    model, prev = student_and_teacher
    kd = FeatureKD(prev, weight=1.0)
    strategy = _fake_strategy(model, "cls", 3)
    p = kd.penalty(strategy)
    assert p is not None and float(p.detach()) > 0
    p.backward()
    assert _grad_sum(model.backbone.parameters()) > 0 and _grad_sum(model.neck.parameters()) > 0
    assert _grad_sum(model.head.parameters()) == 0  # the head is after the distilled features
    # the student equal to the teacher: no pull at all
    same = _fake_strategy(prev.teacher, "cls", 4)
    assert float(kd.penalty(same)) == 0.0


def test_distillers_are_silent_without_a_teacher_or_earlier_task(student_and_teacher):
    model, _ = student_and_teacher
    empty = PreviousModel()
    strategy = _fake_strategy(model, "seg", 5)
    assert LwFDistillation(empty).penalty(strategy) is None and FeatureKD(empty).penalty(strategy) is None
    only_current = PreviousModel()
    only_current.snapshot.model = model
    only_current.snapshot.trained = ["seg"]
    assert LwFDistillation(only_current).penalty(strategy) is None


# ---------------------------------------------------------------------------------------------
# all four remedies in one Avalanche strategy over the three tasks
# ---------------------------------------------------------------------------------------------

MB = 2
OPTIONS = RemedyOptions(ewc_lambda=1e4, replay_mem_per_task=3, replay_per_step=2, num_tasks=3, seed=0)


class LossTap(SupervisedPlugin):
    """Records ``strategy.loss`` at its place in the plugin list (before_backward)."""

    def __init__(self):
        super().__init__()
        self.value = None

    def before_backward(self, strategy, **kwargs):
        self.value = float(strategy.loss.detach().double())


class Observer(SupervisedPlugin):
    """Placed last: records EWC's loss contribution, the distillation penalties and their
    gradients on the shared layers, replay batch composition and memory."""

    def __init__(self, plugins, pre: LossTap, post: LossTap):
        super().__init__()
        self.prev, self.ewc, self.replay, self.lwf, self.kd = plugins
        self.pre, self.post = pre, post
        self.iters: list[dict] = []
        self.exps: list[dict] = []
        self.teacher_checks: list[dict] = []

    def before_training_exp(self, strategy, **kwargs):
        t = self.prev.teacher
        if t is not None:
            same = all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), strategy.model.state_dict().values()))
            self.teacher_checks.append({"exp": strategy.clock.train_exp_counter, "equal_at_start": same,
                                        "distinct": t is not strategy.model,
                                        "frozen": not any(p.requires_grad for p in t.parameters()),
                                        "snapshot": {k: v.clone() for k, v in t.state_dict().items()}})

    def _own_ewc_penalty(self, strategy) -> float:
        total = 0.0
        for e in range(strategy.clock.train_exp_counter):
            for k, p in strategy.model.named_parameters():
                saved, imp = self.ewc.saved_params[e][k].data, self.ewc.importances[e][k].data
                total += float((imp.double() * (p.detach().double() - saved.double()) ** 2).sum())
        return self.ewc.ewc_lambda * total

    def before_backward(self, strategy, **kwargs):
        rec = {"exp": strategy.clock.train_exp_counter, "it": strategy.clock.train_exp_iterations,
               "ewc_added": self.post.value - self.pre.value, "ewc_own": self._own_ewc_penalty(strategy)}
        shared = [p for p in list(strategy.model.backbone.parameters()) + list(strategy.model.neck.parameters())
                  if p.requires_grad]
        for name, plugin in (("lwf", self.lwf), ("kd", self.kd)):
            pen = plugin.penalty(strategy)
            rec[name] = None if pen is None else float(pen.detach())
            if pen is not None and pen.requires_grad:
                grads = torch.autograd.grad(pen, shared, retain_graph=True, allow_unused=True)
                rec[f"{name}_grad"] = float(sum(g.abs().sum() for g in grads if g is not None))
        self.iters.append(rec)

    def after_training_iteration(self, strategy, **kwargs):
        labels = Counter(int(t) for t in strategy.mb_task_id)
        parts = {t: sorted(p.index.tolist()) for t, p in strategy.mb_y.parts.items()}
        by_label = {TASKS[t].label: idx for t, idx in parts.items()}
        positions = {lab: sorted(i for i, v in enumerate(strategy.mb_task_id.tolist()) if v == lab) for lab in labels}
        self.iters[-1].update(labels=dict(labels), parts_match=by_label == positions)

    def after_training_exp(self, strategy, **kwargs):
        groups = self.replay.storage_policy.buffer_groups
        self.exps.append({
            "exp": strategy.clock.train_exp_counter,
            "memory": {g: (len(b.buffer), sorted(set(int(t) for t in b.buffer.targets_task_labels)))
                       for g, b in groups.items()},
            "importances": {e: set(d) for e, d in self.ewc.importances.items()},
            "params": {n for n, _ in strategy.model.named_parameters()},
            "imp_total": {e: float(sum(v.data.sum() for v in d.values())) for e, d in self.ewc.importances.items()},
            "trained": list(self.prev.trained),
            "teacher_unchanged": (self.prev.teacher is None or all(
                torch.equal(v, self.teacher_checks[-1]["snapshot"][k])
                for k, v in self.prev.teacher.state_dict().items())),
        })


@pytest.fixture(scope="module")
def remedied(synthetic_root):
    """Train seg -> det -> cls with ``ewc+replay+lwf+kd`` (probes between the plugins)."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    stream = build_stream(synthetic_root, ORDER, 64, model.mean, model.std, max_images=4)
    plugins = build_plugins("kd+lwf+replay+ewc", OPTIONS)
    pre, post = LossTap(), LossTap()
    observer = Observer(plugins, pre, post)
    prev, ewc, replay, lwf, kd = plugins
    with warnings.catch_warnings():  # "no loggers": nothing is evaluated here
        warnings.simplefilter("ignore", UserWarning)
        evaluator = EvaluationPlugin(loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                     criterion=OneHeadCriterion(model.task_settings), train_mb_size=MB, train_epochs=1,
                     eval_mb_size=MB, device="cpu", plugins=[prev, pre, ewc, post, replay, lwf, kd, observer],
                     evaluator=evaluator, eval_every=-1)
    for exp in stream.benchmark.train_stream:
        strategy.train(exp, drop_last=True, num_workers=0)
    return observer


def _iters(obs, exp):
    return [r for r in obs.iters if r["exp"] == exp]


def test_ewc_penalty_is_zero_first_and_acts_afterwards(remedied):
    first = _iters(remedied, 0)
    assert len(first) == 2  # 4 images, batches of 2
    assert all(r["ewc_added"] == 0.0 and r["ewc_own"] == 0.0 for r in first)
    second, third = _iters(remedied, 1), _iters(remedied, 2)
    assert len(second) == len(third) == 2
    # right after the first stage the weights are the saved ones: no pull yet
    assert second[0]["ewc_own"] == 0.0 and second[0]["ewc_added"] == 0.0
    # after one optimiser step the pull is there; in the third stage the weights are
    # already away from those saved after the first stage
    assert second[1]["ewc_own"] > 1e-4 and third[0]["ewc_own"] > 1e-4 and third[1]["ewc_own"] > 1e-4
    for r in second + third:  # and it is what EWC adds to the loss
        assert r["ewc_added"] == pytest.approx(r["ewc_own"], rel=1e-2, abs=1e-5)


def test_ewc_importances_exist_after_each_experience(remedied):
    e0, e1, e2 = remedied.exps
    assert set(e0["importances"]) == {0} and set(e1["importances"]) == {0, 1} and set(e2["importances"]) == {0, 1, 2}
    for rec in (e0, e1, e2):
        for e, keys in rec["importances"].items():
            assert keys == rec["params"]
            assert rec["imp_total"][e] > 0


def test_replay_mixes_earlier_tasks_within_budget(remedied):
    per_step = OPTIONS.replay_per_step
    assert all(r["labels"] == {0: MB} for r in _iters(remedied, 0))
    for exp, earlier in ((1, [0]), (2, [0, 1])):
        rs = _iters(remedied, exp)
        assert rs, exp
        for r in rs:
            assert r["labels"][exp] == MB  # the current task's batch is untouched
            for t in earlier:
                assert 1 <= r["labels"].get(t, 0) <= per_step, r["labels"]
            assert set(r["labels"]) == {exp, *earlier}
            assert r["parts_match"]  # the TaskBatch parts are where the task labels say


def test_replay_memory_holds_at_most_mem_per_task(remedied):
    mem = OPTIONS.replay_mem_per_task  # 3, fewer than the 4 training images per task
    for k, rec in enumerate(remedied.exps):
        assert set(rec["memory"]) == set(range(k + 1))
        for g, (size, labels) in rec["memory"].items():
            assert size == mem and labels == [g]


def test_lwf_and_kd_act_from_the_second_experience(remedied):
    for r in _iters(remedied, 0):
        assert r["lwf"] is None and r["kd"] is None
    for exp in (1, 2):
        first, second = _iters(remedied, exp)
        # the teacher is the model of the end of the previous stage: no pull at the start
        assert first["kd"] == 0.0
        assert first["lwf"] is not None and second["lwf"] > 0 and second["kd"] > 0
        assert second["lwf_grad"] > 0 and second["kd_grad"] > 0  # the pull reaches backbone + neck
    first, second = _iters(remedied, 1)  # det stage: only seg is distilled, a KL, 0 at the teacher
    assert abs(first["lwf"]) < 1e-6 and second["lwf"] > first["lwf"]
    # cls stage: det's soft targets have entropy, so the penalty is positive from the start
    assert _iters(remedied, 2)[0]["lwf"] > 0


def test_teacher_is_a_frozen_snapshot_of_the_previous_stage(remedied):
    checks = remedied.teacher_checks
    assert [c["exp"] for c in checks] == [1, 2]
    assert all(c["equal_at_start"] and c["distinct"] and c["frozen"] for c in checks)
    assert [r["trained"] for r in remedied.exps] == [["seg"], ["seg", "det"], ["seg", "det", "cls"]]
    assert all(r["teacher_unchanged"] for r in remedied.exps)


def test_lwf_task_weights_scale_each_distilled_task_term():
    torch.manual_seed(0)
    s = {"seg": torch.randn(2, 3, 4, 4), "det": torch.randn(2, 4 + BOX_CHANNELS, 4, 4)}
    t = {k: torch.randn_like(v) for k, v in s.items()}
    teacher = SimpleNamespace(teacher=object(), earlier_tasks=lambda strategy: ["seg", "det"],
                              outputs=lambda strategy: t)
    strategy = SimpleNamespace(mb_output=s)
    seg = seg_distillation(s["seg"], t["seg"], 2.0)
    det = det_distillation(s["det"], t["det"], 0.3)
    plain = LwFDistillation(teacher, temperature=2.0).penalty(strategy)
    held = LwFDistillation(teacher, temperature=2.0, task_weights={"det": 10.0}).penalty(strategy)
    assert float(plain) == pytest.approx(float(seg + det), rel=1e-6)
    assert float(held) == pytest.approx(float(seg + 10 * det), rel=1e-6)
    (lwf,) = [p for p in build_plugins("lwf", RemedyOptions(lwf_task_weights={"det": 3.0}))
              if isinstance(p, LwFDistillation)]
    assert lwf.task_weights == {"det": 3.0}
