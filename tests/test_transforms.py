"""JointTransform and Mosaic: boxes and masks move with the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2

from benchmarks import JointTransform, Mosaic, load_split
from benchmarks.transforms import IMAGENET_MEAN, IMAGENET_STD, mosaic

SIZE = 64
ALLOWED_MASK_VALUES = set(range(21)) | {255}


def _scene(w: int, h: int, box: tuple[int, int, int, int], cls: int = 7):
    """A grey image with a red rectangle at ``box`` (xyxy, exclusive end) and its mask/box."""
    x0, y0, x1, y1 = box
    img = Image.new("RGB", (w, h), (90, 90, 90))
    ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), fill=(250, 10, 10))
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[y0:y1, x0:x1] = cls
    raw = {
        "boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
        "labels": torch.tensor([3]),
        "iscrowd": torch.tensor([0]),
        "mask": torch.from_numpy(mask),
    }
    return img, raw


def _extent(region: np.ndarray) -> tuple[int, int, int, int]:
    """xyxy (exclusive end) of the True pixels."""
    ys, xs = np.nonzero(region)
    assert xs.size, "region vanished"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean).clamp(0, 1) * 255).permute(1, 2, 0).numpy()


def _flip_only(tf: JointTransform) -> JointTransform:
    """Make a training transform deterministic: always flip, no affine jitter, no colour jitter."""
    for pipe in (tf.pipeline, tf.box_pipeline):
        steps = []
        for t in pipe.transforms:
            if isinstance(t, v2.RandomHorizontalFlip):
                t = v2.RandomHorizontalFlip(p=1.0)
            elif isinstance(t, (v2.RandomAffine, v2.ColorJitter)):
                t = v2.Identity()
            steps.append(t)
        pipe.transforms = steps
    return tf


def test_train_pipeline_has_flip_jitter_and_mask_fill():
    tf = JointTransform(SIZE, train=True)
    kinds = [type(t) for t in tf.box_pipeline.transforms]
    assert v2.RandomHorizontalFlip in kinds and v2.RandomAffine in kinds and v2.ColorJitter in kinds
    assert v2.SanitizeBoundingBoxes in kinds
    eval_kinds = [type(t) for t in JointTransform(SIZE, train=False).box_pipeline.transforms]
    assert v2.RandomHorizontalFlip not in eval_kinds and v2.RandomAffine not in eval_kinds


def test_horizontal_flip_moves_a_known_box():
    w, h = 100, 60
    img, raw = _scene(w, h, (10, 5, 30, 25))
    tf = _flip_only(JointTransform(SIZE, train=True))
    image, out = tf(img, raw)
    assert image.shape == (3, SIZE, SIZE)
    sx, sy = SIZE / w, SIZE / h
    # flipped in original pixels: x -> w - x, so [10, 30] -> [70, 90]
    want = torch.tensor([[70 * sx, 5 * sy, 90 * sx, 25 * sy]])
    assert torch.allclose(out["boxes"], want, atol=1e-4)
    assert out["labels"].tolist() == [3] and out["input_size"] == (SIZE, SIZE)
    # the mask and the red pixels flipped too, onto the box
    mx0, my0, mx1, my1 = _extent(out["mask"].numpy() == 7)
    for got, ref in zip((mx0, my0, mx1, my1), want[0].tolist()):
        assert abs(got - ref) <= 1.5
    rgb = _denormalise(image)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90)
    rx0, _, rx1, _ = _extent(red)
    assert rx0 >= SIZE // 2 and abs(rx0 - want[0, 0]) <= 2 and abs(rx1 - want[0, 2]) <= 2


@pytest.mark.parametrize("box", [(10, 5, 30, 25), (0, 0, 50, 60), (73, 31, 149, 88)])
def test_box_and_mask_stay_aligned_after_eval_resize(box):
    w, h = 150, 90
    img, raw = _scene(w, h, box)
    image, out = JointTransform(SIZE, train=False)(img, raw)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert out["mask"].shape == (SIZE, SIZE)
    bx = out["boxes"][0].tolist()
    mx = _extent(out["mask"].numpy() == 7)
    for got, ref in zip(mx, bx):
        assert abs(got - ref) <= 1.5, (mx, bx)
    assert set(np.unique(out["mask"].numpy()).tolist()) <= {0, 7}


def test_eval_transform_scales_boxes_and_sets_input_size():
    w, h = 200, 80
    img, raw = _scene(w, h, (20, 10, 120, 70))
    raw["orig_size"] = (h, w)
    image, out = JointTransform(SIZE, train=False)(img, raw)
    assert tuple(image.shape) == (3, SIZE, SIZE)
    assert out["input_size"] == (SIZE, SIZE)
    assert out["orig_size"] == (h, w)
    want = torch.tensor([[20 * SIZE / w, 10 * SIZE / h, 120 * SIZE / w, 70 * SIZE / h]])
    assert torch.allclose(out["boxes"], want, atol=1e-4)
    assert type(out["boxes"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    assert type(image) is torch.Tensor
    # input is not mutated
    assert torch.equal(raw["boxes"], torch.tensor([[20.0, 10.0, 120.0, 70.0]]))


def test_eval_transform_on_a_reader_sample(synthetic_root):
    ds = load_split(synthetic_root, "det", "val")
    _, raw = ds.load(0)
    ds.transform = JointTransform(SIZE, train=False)
    _, target = ds[0]
    oh, ow = raw["orig_size"]
    assert target.input_size == (SIZE, SIZE) and target.orig_size == (oh, ow)
    scale = torch.tensor([SIZE / ow, SIZE / oh, SIZE / ow, SIZE / oh])
    assert torch.allclose(target.boxes, raw["boxes"] * scale, atol=1e-4)
    assert torch.allclose(target.to_original(target.boxes), raw["boxes"], atol=1e-3)
    assert torch.equal(target.labels, raw["labels"])


def test_train_masks_keep_only_class_ids_and_ignore():
    # a fine checkerboard of ids 3 and 17: any interpolation but nearest would invent values
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.where(((yy // 3) + (xx // 3)) % 2 == 0, 3, 17).astype(np.uint8)
    mask[:4] = 255
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    tf = JointTransform(SIZE, train=True)
    seen: set[int] = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, out = tf(img, {"mask": torch.from_numpy(mask)})
        m = out["mask"]
        assert image.shape == (3, SIZE, SIZE) and m.shape == (SIZE, SIZE)
        assert m.dtype == torch.uint8
        values = set(torch.unique(m).tolist())
        assert values <= {3, 17, 255}, values
        seen |= values
    assert {3, 17, 255} <= seen


def test_train_transform_on_synthetic_masks_and_boxes(synthetic_root):
    seg = load_split(synthetic_root, "seg", "train", JointTransform(SIZE, train=True))
    det = load_split(synthetic_root, "det", "train", JointTransform(SIZE, train=True))
    torch.manual_seed(0)
    n_boxes = 0
    for i in range(8):
        image, t = seg[i]
        assert image.shape == (3, SIZE, SIZE) and t.mask.shape == (SIZE, SIZE)
        assert set(torch.unique(t.mask).tolist()) <= ALLOWED_MASK_VALUES
        image, d = det[i]
        assert image.shape == (3, SIZE, SIZE) and d.input_size == (SIZE, SIZE)
        assert len(d.boxes) == len(d.labels)
        if len(d.boxes):
            assert float(d.boxes.min()) >= 0 and float(d.boxes.max()) <= SIZE
            assert bool(((d.boxes[:, 2:] - d.boxes[:, :2]) >= 2).all())  # sanitised
            assert int(d.labels.min()) >= 0 and int(d.labels.max()) < 10
        n_boxes += len(d.boxes)
    assert n_boxes > 0


def _part(value: float, boxes: list[list[float]], size: int = 16) -> tuple[torch.Tensor, dict]:
    """A flat view (every pixel ``value``; the mask holds ``int(value)``) with its boxes."""
    return torch.full((3, size, size), value), {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(boxes)), "iscrowd": torch.zeros(len(boxes), dtype=torch.long),
        "mask": torch.full((size, size), int(value), dtype=torch.uint8), "image_id": 7, "orig_size": (40, 30)}


def test_mosaic_tiles_pixels_masks_and_boxes_by_quadrant():
    # the part of the top-left quadrant shows its own bottom-right corner: its box at 10..14
    # lands 6 px up and left at 4..8 (centre (10, 12) on a 16 px view: shift (-6, -4))
    parts = [_part(1, [[10, 12, 14, 16]]), _part(2, [[0, 0, 4, 4], [13, 0, 16, 4]]),
             _part(3, [[8, 0, 16, 2]]), _part(4, [])]
    image, raw = mosaic(parts, (10, 12))
    assert (image[:, :12, :10] == 1).all() and (image[:, :12, 10:] == 2).all()
    assert (image[:, 12:, :10] == 3).all() and (image[:, 12:, 10:] == 4).all()
    assert torch.equal(raw["mask"], image[0].to(torch.uint8))
    # part 2 (top right, shift (10, -4)): [0,0,4,4] -> [10,-4,14,0], nothing left in view (dropped);
    # [13,0,16,4] -> x 23..26, outside the view (dropped).  Part 3 (bottom left, shift (-6, 12)):
    # [8,0,16,2] -> [2,12,10,14], all in its quadrant
    assert raw["boxes"].tolist() == [[4.0, 8.0, 8.0, 12.0], [2.0, 12.0, 10.0, 14.0]]
    assert raw["labels"].tolist() == [0, 0] and raw["iscrowd"].tolist() == [0, 0]
    assert raw["image_id"] == -1 and raw["orig_size"] == raw["input_size"] == (16, 16)


def test_mosaic_clips_cut_boxes_and_drops_the_mostly_hidden():
    # top-left part, shift (-8, -8): a box across the quadrant's edge is clipped to it when at
    # least a quarter of its area stays, and dropped when less does
    half = [4, 10, 12, 14]      # -> [-4, 2, 4, 6]: half its area stays, clipped to [0, 2, 4, 6]
    sliver = [0, 10, 9, 14]     # -> [-8, 2, 1, 6]: 1/9 of its area stays: dropped
    parts = [_part(1, [half, sliver])] + [_part(v, []) for v in (2, 3, 4)]
    _, raw = mosaic(parts, (8, 8))
    assert raw["boxes"].tolist() == [[0.0, 2.0, 4.0, 6.0]] and raw["labels"].tolist() == [0]


def test_mosaic_refuses_what_it_cannot_tile():
    label_only = (torch.zeros(3, 16, 16), {"label": 3})
    with pytest.raises(ValueError, match="boxes or masks"):
        mosaic([label_only] * 4, (8, 8))
    with pytest.raises(ValueError, match="4 views"):
        mosaic([_part(1, [])] * 3, (8, 8))
    with pytest.raises(ValueError, match="outside"):
        mosaic([_part(1, [])] * 4, (16, 8))
    with pytest.raises(ValueError, match="one size"):
        mosaic([_part(1, [])] * 3 + [_part(1, [], size=8)], (8, 8))


@pytest.mark.parametrize("task", ["det", "seg"])
def test_mosaic_views_of_a_reader_are_seeded_training_samples(synthetic_root, task):
    ds = load_split(synthetic_root, task, "train", JointTransform(SIZE, train=True))
    views = Mosaic(ds)
    torch.manual_seed(3)
    image, target = views[0]
    torch.manual_seed(3)
    again, target_again = views[0]
    assert image.shape == (3, SIZE, SIZE) and torch.equal(image, again) and len(views) == len(ds)
    if task == "det":
        assert target.input_size == (SIZE, SIZE) and torch.equal(target.boxes, target_again.boxes)
        assert ((target.boxes >= 0) & (target.boxes <= SIZE)).all()
    else:
        assert target.mask.shape == (SIZE, SIZE) and set(target.mask.unique().tolist()) <= ALLOWED_MASK_VALUES
