"""JointTransform: boxes and masks move with the image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2

from benchmarks import JointTransform, load_split
from benchmarks.transforms import IMAGENET_MEAN, IMAGENET_STD

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
