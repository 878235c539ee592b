"""The distillation algorithms on hand-made tensors, apart from any Avalanche strategy."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from strategies.regularization import DenseLwF, Teacher, feature_distillation
from strategies.remedies import distillation_term


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


@pytest.fixture
def lwf() -> DenseLwF:
    return DenseLwF(distillation_term, temperature=2.0, det_threshold=0.3)


def test_identical_student_and_teacher_cost_nothing_on_seg_and_cls(lwf):
    g = torch.Generator().manual_seed(0)
    out = {"seg": torch.randn(2, 21, 4, 4, generator=g), "cls": torch.randn(3, 10, generator=g)}
    same = {k: v.clone() for k, v in out.items()}
    assert float(lwf.penalty(out, same, ["seg", "cls"])) == pytest.approx(0.0, abs=1e-6)


def test_classification_penalty_of_a_known_pair_is_the_temperature_kl(lwf):
    teacher = {"cls": torch.tensor([[math.log(3.0), 0.0]])}
    student = {"cls": torch.tensor([[0.0, 0.0]])}
    t = lwf.temperature
    expected = _kl(_softmax([math.log(3.0) / t, 0.0]), [0.5, 0.5]) * t * t  # KL(teacher || student) * T^2
    assert float(lwf.penalty(student, teacher, ["cls"])) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.14536, abs=1e-5)


def test_segmentation_penalty_is_the_kl_averaged_over_pixels(lwf):
    # two pixels: the first agrees with the teacher, the second is the classification pair above
    teacher = {"seg": torch.tensor([[[[1.0, math.log(3.0)]], [[2.0, 0.0]]]])}  # (1, 2 classes, 1, 2)
    student = {"seg": torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]]]])}
    t = lwf.temperature
    per_pixel = [0.0, _kl(_softmax([math.log(3.0) / t, 0.0]), [0.5, 0.5]) * t * t]
    assert float(lwf.penalty(student, teacher, ["seg"])) == pytest.approx(sum(per_pixel) / 2, rel=1e-5)


def test_detection_penalty_of_a_known_pair(lwf):
    """One location where the teacher is unsure of every class (p = 0.5, above the 0.3 threshold,
    so its box counts): soft BCE on 10 classes, smooth L1 on the box, BCE on centre-ness."""
    teacher = torch.zeros(1, 15, 1, 1)
    teacher[0, 10:14, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    student = teacher.clone()
    student[0, 13, 0, 0] = 5.0  # one box side off by 1: smooth L1 gives 0.5, mean over 4 sides
    expected = 10 * math.log(2) + 0.5 / 4 + math.log(2)
    assert float(lwf.penalty({"det": student}, {"det": teacher}, ["det"])) == pytest.approx(expected, rel=1e-5)


def test_only_the_tasks_asked_for_are_distilled_and_their_terms_add_up(lwf):
    g = torch.Generator().manual_seed(1)
    student = {"seg": torch.randn(1, 21, 2, 2, generator=g), "cls": torch.randn(2, 10, generator=g)}
    teacher = {"seg": torch.randn(1, 21, 2, 2, generator=g), "cls": torch.randn(2, 10, generator=g)}
    seg, cls = (float(lwf.penalty(student, teacher, [t])) for t in ("seg", "cls"))
    assert seg > 0 and cls > 0
    assert float(lwf.penalty(student, teacher, ["seg", "cls"])) == pytest.approx(seg + cls, rel=1e-5)
    moved = {**student, "cls": student["cls"] + 10 * torch.randn(2, 10, generator=g)}
    assert float(lwf.penalty(moved, teacher, ["seg"])) == pytest.approx(seg)  # cls not asked for


def test_each_task_term_comes_from_the_lookup_with_the_lwf_settings():
    calls = []

    def term(s, t, settings):
        calls.append((s, t, settings.temperature, settings.det_threshold))
        return (s - t).abs().sum()

    algo = DenseLwF({"seg": term, "cls": term}.get, temperature=3.0, det_threshold=0.4)
    assert algo.distilled(["seg", "det", "cls"]) == ["seg", "cls"]  # det has no term here: not distilled
    s, t = {"seg": torch.ones(2), "cls": torch.zeros(2)}, {"seg": torch.zeros(2), "cls": torch.zeros(2)}
    assert float(algo.penalty(s, t, ["seg", "cls"])) == 2.0
    assert [(c[2], c[3]) for c in calls] == [(3.0, 0.4), (3.0, 0.4)]
    assert calls[0][0] is s["seg"] and calls[1][1] is t["cls"]


def test_feature_distillation_is_the_mean_squared_distance():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 3.0]])
    assert float(feature_distillation(student, teacher)) == pytest.approx((1 + 9) / 2)
    assert float(feature_distillation(teacher, teacher.clone())) == 0.0


class _Counting(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_the_teacher_is_a_frozen_copy_taken_only_after_a_task_was_learned():
    model = _Counting(2, 2)
    teacher = Teacher()
    teacher.take(model)
    assert teacher.model is None  # nothing learned yet: nothing to distil from
    teacher.learned("seg")
    teacher.learned("seg")
    teacher.learned("det")
    assert teacher.trained == ["seg", "det"] and teacher.earlier_than("det") == ["seg"]
    teacher.take(model)
    copy = teacher.model
    assert copy is not model and not copy.training and not any(p.requires_grad for p in copy.parameters())
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        model.weight.add_(1.0)  # the student moves on; the teacher does not
    assert not torch.equal(copy.weight, model.weight)


def test_the_teachers_outputs_are_computed_once_per_key():
    teacher = Teacher()
    teacher.learned("seg")
    teacher.take(_Counting(2, 2))
    x = torch.randn(3, 2)
    _Counting.calls = 0
    first = teacher.outputs(x, key=7)
    assert teacher.outputs(x, key=7) is first and _Counting.calls == 1
    assert not first.requires_grad
    teacher.outputs(x, key=8)
    assert _Counting.calls == 2


def test_task_weights_scale_each_term_and_default_to_one():
    g = torch.Generator().manual_seed(2)
    student = {"seg": torch.randn(1, 21, 2, 2, generator=g), "cls": torch.randn(2, 10, generator=g)}
    teacher = {"seg": torch.randn(1, 21, 2, 2, generator=g), "cls": torch.randn(2, 10, generator=g)}
    plain = DenseLwF(distillation_term, temperature=2.0)
    held = DenseLwF(distillation_term, temperature=2.0, task_weights={"cls": 3.0})
    seg, cls = (float(plain.penalty(student, teacher, [t])) for t in ("seg", "cls"))
    assert float(held.penalty(student, teacher, ["seg", "cls"])) == pytest.approx(seg + 3.0 * cls, rel=1e-5)
