"""The Avalanche stream: one experience per task, fixed task labels, mixed-batch collate."""
from __future__ import annotations

import pytest
import torch

from avalanche_onehead.targets import TaskBatch
from avalanche_onehead.tasks import TASKS
from avalanche_onehead.tasks.cls import ClsTarget
from avalanche_onehead.tasks.det import DetTarget, DetTargets
from benchmarks import build_stream

SIZE = 64


@pytest.fixture(scope="module")
def stream(synthetic_root):
    return build_stream(synthetic_root, image_size=SIZE)


def _task_labels(exp) -> list[int]:
    """The experience's task labels, checked against those its samples carry."""
    from_data = sorted(set(int(t) for t in exp.dataset.targets_task_labels))
    assert list(exp.task_labels) == from_data
    assert exp.task_label == from_data[0]
    return from_data


def test_three_train_and_test_experiences(stream):
    bench = stream.benchmark
    assert stream.order == ["seg", "det", "cls"]
    assert len(bench.train_stream) == 3 and len(bench.test_stream) == 3
    for split, sets in (("train", stream.train_sets), ("test", stream.test_sets)):
        exps = list(getattr(bench, f"{split}_stream"))
        assert [len(e.dataset) for e in exps] == [len(sets[t]) for t in stream.order]
    assert [_task_labels(e) for e in bench.train_stream] == [[0], [1], [2]]
    assert [_task_labels(e) for e in bench.test_stream] == [[0], [1], [2]]
    assert {t: len(c) for t, c in stream.classes.items()} == {"seg": 21, "det": 10, "cls": 10}
    assert stream.train_sets["det"].category_ids == [1, 14, 39, 42, 52, 65, 67, 73, 74, 88]


def test_experience_samples_are_typed_and_resized(stream):
    for split in ("train", "test"):
        for task, exp in zip(stream.order, getattr(stream.benchmark, f"{split}_stream")):
            image, target, task_label = exp.dataset[0]
            assert image.shape == (3, SIZE, SIZE)
            assert isinstance(target, TASKS[task].target)
            assert task_label == TASKS[task].label
            if task == "seg":
                assert target.mask.shape == (SIZE, SIZE)
            if task == "det":
                assert target.input_size == (SIZE, SIZE)


def test_task_labels_do_not_depend_on_order(synthetic_root):
    s = build_stream(synthetic_root, order=("cls", "seg"), image_size=SIZE)
    assert s.order == ["cls", "seg"]
    assert len(s.benchmark.train_stream) == 2 and len(s.benchmark.test_stream) == 2
    assert [_task_labels(e) for e in s.benchmark.train_stream] == [[2], [0]]
    assert [_task_labels(e) for e in s.benchmark.test_stream] == [[2], [0]]
    _, target, label = s.benchmark.train_stream[0].dataset[0]
    assert isinstance(target, ClsTarget) and label == 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_mixed_batch_collates_into_task_batch(stream, split):
    d_seg, d_det, d_cls = (e.dataset for e in getattr(stream.benchmark, f"{split}_stream"))
    mixed = d_seg.concat(d_det).concat(d_cls)
    n_seg, n_det = len(d_seg), len(d_det)
    assert len(mixed) == n_seg + n_det + len(d_cls)
    # interleave the tasks: cls, seg, det, seg, cls, det
    picks = [n_seg + n_det + 3, 0, n_seg + 1, 5, n_seg + n_det, n_seg]
    want_labels = [2, 0, 1, 0, 2, 1]
    batch = [mixed[i] for i in picks]
    images, targets, task_labels = mixed.collate_fn(batch)
    assert images.shape == (len(picks), 3, SIZE, SIZE)
    assert isinstance(targets, TaskBatch) and len(targets) == len(picks)
    assert task_labels.tolist() == want_labels
    covered = []
    for name in ("seg", "det", "cls"):
        assert name in targets
        part = targets[name]
        assert part.index.dtype == torch.long
        assert (task_labels[part.index] == TASKS[name].label).all()
        covered += part.index.tolist()
    assert sorted(covered) == list(range(len(picks)))
    seg, det, cls = targets["seg"].target, targets["det"].target, targets["cls"].target
    assert seg.shape == (2, SIZE, SIZE) and seg.dtype == torch.long
    assert isinstance(det, DetTargets) and len(det) == 2 and all(isinstance(t, DetTarget) for t in det.items)
    assert cls.dtype == torch.long and cls.shape == (2,)
    # the classification labels are those of the picked samples
    assert cls.tolist() == [batch[i][1].label for i in targets["cls"].index.tolist()]
    # images keep their batch positions
    for k, sample in enumerate(batch):
        assert torch.equal(images[k], sample[0])

    moved = targets.to("cpu")
    assert isinstance(moved, TaskBatch) and moved.batch_size == len(picks)
    assert set(moved.parts) == {"seg", "det", "cls"}
    assert torch.equal(moved["seg"].target, seg)
    assert torch.equal(moved["cls"].index, targets["cls"].index)
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(moved["det"].target.items, det.items))


def test_single_task_batch_has_only_that_part(stream):
    d_cls = stream.benchmark.test_stream[2].dataset
    images, targets, task_labels = d_cls.collate_fn([d_cls[i] for i in range(4)])
    assert images.shape == (4, 3, SIZE, SIZE)
    assert set(targets.parts) == {"cls"} and "seg" not in targets
    assert targets["cls"].index.tolist() == [0, 1, 2, 3]
    assert task_labels.tolist() == [2, 2, 2, 2]


def test_max_images_truncates_every_split(synthetic_root):
    s = build_stream(synthetic_root, order=("det", "cls"), image_size=SIZE, max_images=3)
    for sets in (s.train_sets, s.test_sets):
        assert {t: len(ds) for t, ds in sets.items()} == {"det": 3, "cls": 3}
    assert [len(e.dataset) for e in s.benchmark.train_stream] == [3, 3]
    assert [len(e.dataset) for e in s.benchmark.test_stream] == [3, 3]
    assert [_task_labels(e) for e in s.benchmark.train_stream] == [[1], [2]]
