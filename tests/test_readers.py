"""Readers on the real mini-datasets (skipped when none are found: see conftest.find_real_data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from avalanche_onehead.tasks.cls import ClsTarget
from avalanche_onehead.tasks.det import DetTarget
from avalanche_onehead.tasks.seg import SegTarget
from benchmarks import CocoDetection, FolderClassification, VocSegmentation, load_split

COCO_IDS = [1, 14, 39, 42, 52, 65, 67, 73, 74, 88]
SPLIT_SIZES = {"train": 240, "val": 60}
NUM_CLASSES = {"seg": 21, "det": 10, "cls": 10}
READER_TYPES = {"seg": VocSegmentation, "det": CocoDetection, "cls": FolderClassification}


@pytest.fixture(scope="module")
def det_train(real_root) -> CocoDetection:
    return load_split(real_root, "det", "train")


@pytest.fixture(scope="module")
def train_json(real_root) -> dict:
    return json.loads((real_root / "mini_coco_det" / "annotations" / "COCO_train.json").read_text())


@pytest.mark.parametrize("task", ["seg", "det", "cls"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_split_sizes_and_class_counts(real_root, task, split):
    ds = load_split(real_root, task, split)
    assert isinstance(ds, READER_TYPES[task])
    assert len(ds) == SPLIT_SIZES[split]
    assert len(ds.classes) == NUM_CLASSES[task]


def test_seg_masks_keep_palette_indices(real_root):
    ds = load_split(real_root, "seg", "train")
    assert ds.classes[0] == "background" and ds.classes[15] == "person"
    seen = set()
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        img_path, mask_path = ds.samples[i]
        assert img_path.stem == mask_path.stem
        with Image.open(mask_path) as m:
            assert m.mode == "P"
            expected = np.array(m)
        image, raw = ds.load(i)
        got = raw["mask"].numpy()
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)  # indices, not RGB palette colours
        assert image.size == (expected.shape[1], expected.shape[0])
        _, target = ds[i]  # no transform: the typed target holds the same ids
        assert isinstance(target, SegTarget) and target.mask.dtype == torch.long
        assert torch.equal(target.mask, torch.from_numpy(expected).long())
        seen |= set(np.unique(got).tolist())
    assert 255 in seen
    assert any(0 < v <= 20 for v in seen)
    assert seen <= set(range(21)) | {255}


def test_coco_category_ids_come_from_the_json(det_train, train_json):
    assert det_train.category_ids == COCO_IDS
    assert det_train.classes[0] == "person" and det_train.classes[-1] == "teddy bear"
    assert det_train.cat_to_label == {cid: i for i, cid in enumerate(COCO_IDS)}


@pytest.mark.parametrize("ann_id", [1673841, 1674658])  # teddy bears (category_id 88)
def test_coco_annotation_label_and_box(det_train, train_json, ann_id):
    ann = next(a for a in train_json["annotations"] if a["id"] == ann_id)
    assert ann["category_id"] == 88 and not ann["iscrowd"]
    info = next(im for im in train_json["images"] if im["id"] == ann["image_id"])
    idx = next(i for i, s in enumerate(det_train.samples) if s[0] == ann["image_id"])
    _, target = det_train[idx]
    assert isinstance(target, DetTarget)
    assert target.image_id == ann["image_id"]
    assert target.orig_size == (info["height"], info["width"])
    x, y, w, h = ann["bbox"]
    want = torch.tensor([x, y, x + w, y + h])
    rows = [k for k in range(len(target.boxes)) if torch.allclose(target.boxes[k], want, atol=1e-3)]
    assert len(rows) == 1, f"box {want.tolist()} not found in {target.boxes.tolist()}"
    label = int(target.labels[rows[0]])
    assert label == COCO_IDS.index(88) == 9
    assert label != ann["category_id"] - 1
    assert det_train.classes[label] == "teddy bear"


def test_coco_every_box_of_an_image_matches_the_json(det_train, train_json):
    # an image with several categories, to check the whole mapping at once
    by_image: dict[int, list[dict]] = {}
    for a in train_json["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    img_id = max(by_image, key=lambda k: (len({a["category_id"] for a in by_image[k]}), -k))
    anns = [a for a in by_image[img_id] if not a["iscrowd"]]
    idx = next(i for i, s in enumerate(det_train.samples) if s[0] == img_id)
    _, raw = det_train.load(idx)
    keep = raw["iscrowd"] == 0
    got_boxes, got_labels = raw["boxes"][keep], raw["labels"][keep]
    assert len(got_boxes) == len(anns)
    assert len({a["category_id"] for a in anns}) >= 2
    for a in anns:
        x, y, w, h = a["bbox"]
        want = torch.tensor([x, y, x + w, y + h])
        hits = [k for k in range(len(got_boxes)) if torch.allclose(got_boxes[k], want, atol=1e-3)]
        assert hits, f"annotation {a['id']} box missing"
        assert COCO_IDS.index(a["category_id"]) in {int(got_labels[k]) for k in hits}


def test_coco_crowd_boxes_kept_apart(det_train, train_json):
    n_crowd_json = sum(1 for a in train_json["annotations"] if a.get("iscrowd", 0))
    assert n_crowd_json == 13
    crowd = plain = 0
    for i in range(len(det_train)):
        _, t = det_train[i]
        assert len(t.crowd_boxes) == len(t.crowd_labels)
        assert len(t.boxes) == len(t.labels)
        crowd += len(t.crowd_boxes)
        plain += len(t.boxes)
    assert crowd == 13
    assert plain == len(train_json["annotations"]) - 13
    assert det_train.summary()["crowd_boxes"] == 13


def test_grayscale_imagenette_images_come_back_rgb(real_root):
    ds = load_split(real_root, "cls", "train")
    gray = []
    for i, (path, _) in enumerate(ds.samples):
        with Image.open(path) as im:
            if im.mode == "L":
                gray.append(i)
    assert len(gray) == 3
    for i in gray:
        image, _ = ds.load(i)
        assert image.mode == "RGB"
        arr = np.asarray(image)
        assert arr.ndim == 3 and arr.shape[2] == 3
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


@pytest.mark.parametrize("split", ["train", "val"])
def test_cls_label_is_sorted_folder_index(real_root, split):
    ds = load_split(real_root, "cls", split)
    folders = sorted(p.name for p in (real_root / "imagenette_160" / split).iterdir() if p.is_dir())
    assert ds.wnids == folders
    assert ds.classes[0] == "tench" and ds.classes[folders.index("n03888257")] == "parachute"
    counts = [0] * len(folders)
    for i, (path, label) in enumerate(ds.samples):
        assert label == folders.index(path.parent.name)
        counts[label] += 1
    assert counts == [SPLIT_SIZES[split] // 10] * 10
    # the typed target carries the same index
    for i in (0, len(ds) - 1):
        _, target = ds[i]
        assert isinstance(target, ClsTarget)
        assert target.label == folders.index(ds.samples[i][0].parent.name)
