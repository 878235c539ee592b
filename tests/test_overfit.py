"""Overfit a few synthetic images per task with the pretrained Lite0 model.

The classic sanity check of a detection pipeline (DESIGN pitfall 3): if the
encoding, assignment, loss, decoding and metric agree, a handful of images is
learnt in a few dozen steps.  Plain torch loop, the project's own parameter
groups (backbone at 0.3x the rate, no weight decay), no augmentation; training
stops as soon as the metric passes, within a fixed step budget.
"""
from __future__ import annotations

import time

import pytest
import torch

from avalanche_onehead.losses import OneHeadCriterion
from avalanche_onehead.model import create_model
from avalanche_onehead.targets import collate_onehead
from avalanche_onehead.tasks import TASKS
from avalanche_onehead.training import param_groups
from benchmarks import JointTransform, load_split

SIZE = 128

# task: (images, lr, step budget, evaluate every, metric, threshold)
# steps measured on the 2-core CPU (seed 0): det passes at ~30, seg at ~100-120, cls at ~20-30
CASES = {
    "det": (4, 2e-3, 150, 10, "mAP50", 0.9),
    "seg": (4, 3e-3, 240, 10, "mIoU", 0.5),
    "cls": (8, 1e-3, 100, 10, "Top-1", 1.0),
}
# what else a task must reach before training stops: detection's boxes are tight, not only hits at IoU 0.5
ALSO = {"det": {"mAP": 0.5}}


def _passed(task: str, res: dict[str, float], metric: str, threshold: float) -> bool:
    return res[metric] >= threshold and all(res[k] >= v for k, v in ALSO.get(task, {}).items())


def _pick(ds, task: str, n: int) -> list[int]:
    if task == "cls":  # one image of each of n different classes (both stripe orientations)
        first: dict[int, int] = {}
        for i, (_, label) in enumerate(ds.samples):
            first.setdefault(label, i)
        return [first[c] for c in sorted(first)[:n]]
    return list(range(n))


def _evaluate(model, task, images, targets) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(images)
    model.train()
    ev = TASKS[task].make_evaluator(TASKS[task].num_classes)
    part = targets[task]
    ev.update(out[task][part.index], part.target)
    return ev.compute()


@pytest.mark.parametrize("task", list(CASES))
def test_overfit_a_few_images(task, synthetic_root, capsys):
    n, lr, budget, every, metric, threshold = CASES[task]
    torch.manual_seed(0)
    model = create_model()
    assert model.weights_source  # the packaged ImageNet weights, not a random init
    ds = load_split(synthetic_root, task, "train",
                    JointTransform(SIZE, train=False, mean=model.mean, std=model.std))
    idx = _pick(ds, task, n)
    images, targets = collate_onehead([ds[i] for i in idx])
    assert images.shape == (n, 3, SIZE, SIZE) and set(targets.parts) == {task}
    if task == "cls":
        assert len(set(targets["cls"].target.tolist())) == n
    if task == "det":
        assert all(len(t.boxes) > 0 for t in targets["det"].target.items)

    before = _evaluate(model, task, images, targets)
    assert before[metric] < threshold  # not learnt before training: the test can fail

    criterion = OneHeadCriterion(model.task_settings)
    optimizer = torch.optim.AdamW(param_groups(model, lr, 0.3, 0.0))
    model.train()
    t0 = time.perf_counter()
    losses, res, step = [], before, 0
    for step in range(1, budget + 1):
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        assert torch.isfinite(loss), f"loss became {losses[-1]} at step {step}"
        if step % every == 0:
            res = _evaluate(model, task, images, targets)
            if _passed(task, res, metric, threshold):
                break
    seconds = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[overfit {task}] {n} images, {step} steps, {seconds:.1f} s, {metric} "
              f"{before[metric]:.3f} -> {res[metric]:.3f}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert res[metric] >= threshold, f"{metric} {res[metric]:.3f} after {step} steps (needs {threshold})"
    assert losses[-1] < 0.8 * losses[0]
    if task == "seg":
        # far above always-background (the majority class): objects are segmented
        mask = targets["seg"].target
        background = float((mask == 0).sum() / (mask != 255).sum())
        assert res["pixel_acc"] > background + 0.5 * (1 - background)
    for key, bar in ALSO.get(task, {}).items():
        assert res[key] >= bar, f"{key} {res[key]:.3f} after {step} steps (needs {bar})"
