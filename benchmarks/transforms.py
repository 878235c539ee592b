"""Joint image/box/mask transforms on torchvision.transforms.v2 and tv_tensors.

Evaluation is a plain resize to ``image_size`` x ``image_size`` (bicubic, like the
challenge's evaluator); training adds a flip, a scale/translate jitter and
colour jitter.  Boxes and masks move with the image; masks use nearest
neighbour and fill new pixels with 255 (ignore).  :class:`Mosaic` views tile four
training images into one (YOLOv4's mosaic, without rescaling).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.utils.data
from torchvision import tv_tensors
from torchvision.ops import box_area
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class JointTransform:
    """Callable ``(PIL image, raw target dict) -> (normalised tensor, raw target dict)``."""

    def __init__(self, image_size: int = 512, train: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 scale: tuple[float, float] = (0.75, 1.25)):
        self.image_size = image_size
        self.train = train
        size = (image_size, image_size)
        steps: list[Any] = [v2.ToImage()]
        if train:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True))
        if train:
            steps += [
                v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=scale,
                                fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
                v2.ColorJitter(0.3, 0.3, 0.3, 0.02),
            ]
        tail = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(mean=list(mean), std=list(std))]
        self.pipeline = v2.Compose(steps + tail)
        # boxes pushed out of the frame by the jitter are dropped with their labels
        box_steps = [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2, labels_getter=_labels_getter)]
        self.box_pipeline = v2.Compose(steps + (box_steps if train else []) + tail)

    def __call__(self, image, raw: dict[str, Any]):
        raw = dict(raw)
        w, h = image.size
        if "boxes" in raw:
            raw["boxes"] = tv_tensors.BoundingBoxes(raw["boxes"], format="XYXY", canvas_size=(h, w))
        if "mask" in raw:
            raw["mask"] = tv_tensors.Mask(raw["mask"])
        image, raw = (self.box_pipeline if "boxes" in raw else self.pipeline)(image, raw)
        if "boxes" in raw:
            raw["boxes"] = raw["boxes"].as_subclass(torch.Tensor)
            raw["input_size"] = (self.image_size, self.image_size)
        if "mask" in raw:
            raw["mask"] = raw["mask"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), raw


def _labels_getter(inputs):
    raw = inputs[1]
    return raw["labels"], raw["iscrowd"]


#: a box a mosaic cuts keeps its label only if at least this share of its area stays in view
MOSAIC_MIN_VISIBLE = 0.25
#: the mosaic's centre is drawn uniformly in this band of each side
MOSAIC_CENTRE = (0.25, 0.75)


def mosaic(parts: Sequence[tuple[torch.Tensor, dict[str, Any]]], centre: tuple[int, int],
           min_visible: float = MOSAIC_MIN_VISIBLE) -> tuple[torch.Tensor, dict[str, Any]]:
    """Four transformed views of one size (``(C, H, W)`` tensors and their raw targets) tiled
    into one: the quadrants around ``centre`` = (x, y) are filled top-left, top-right,
    bottom-left, bottom-right by the parts, each showing its own corner that faces the
    mosaic's corner, at its own scale.  Boxes move with their pixels and are clipped to their
    quadrant; a box with less than ``min_visible`` of its area left is dropped with its label.
    Masks are tiled like the pixels.  The result refers to the mosaic alone: ``image_id`` -1,
    ``orig_size`` = ``input_size`` = (H, W)."""
    if len(parts) != 4:
        raise ValueError(f"a mosaic tiles 4 views, not {len(parts)}")
    image = torch.empty_like(parts[0][0])
    h, w = image.shape[-2:]
    cx, cy = centre
    if not (0 < cx < w and 0 < cy < h):
        raise ValueError(f"mosaic centre {centre} outside the {w}x{h} view")
    first = parts[0][1]
    if "boxes" not in first and "mask" not in first:
        raise ValueError("a mosaic needs boxes or masks to tile (an image-level label cannot be)")
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in ("boxes", "labels", "iscrowd", "mask")}
    out.update(image_id=-1, orig_size=(h, w), input_size=(h, w))
    boxes, labels, crowd, mask = [], [], [], None
    if "mask" in first:
        mask = torch.empty_like(first["mask"])
    for q, (img, raw) in enumerate(parts):
        if img.shape != image.shape:
            raise ValueError(f"mosaic views must share one size: {tuple(img.shape)} != {tuple(image.shape)}")
        left, top = q % 2 == 0, q < 2
        x0, x1 = (0, cx) if left else (cx, w)
        y0, y1 = (0, cy) if top else (cy, h)
        dx, dy = (cx - w if left else cx), (cy - h if top else cy)  # the part's shift on the mosaic
        image[:, y0:y1, x0:x1] = img[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        if mask is not None:
            mask[..., y0:y1, x0:x1] = raw["mask"][..., y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        if "boxes" in first:
            b = raw["boxes"] + torch.tensor([dx, dy, dx, dy], dtype=raw["boxes"].dtype)
            clipped = torch.stack([b[:, 0].clamp(x0, x1), b[:, 1].clamp(y0, y1),
                                   b[:, 2].clamp(x0, x1), b[:, 3].clamp(y0, y1)], 1)
            cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            keep = (box_area(clipped) >= min_visible * box_area(b)) & (cw >= 2) & (ch >= 2)
            boxes.append(clipped[keep])
            labels.append(raw["labels"][keep])
            crowd.append(raw["iscrowd"][keep])
    if "boxes" in first:
        out.update(boxes=torch.cat(boxes), labels=torch.cat(labels), iscrowd=torch.cat(crowd))
    if mask is not None:
        out["mask"] = mask
    return image, out


class Mosaic(torch.utils.data.Dataset):
    """Mosaic views of a task's training set: item ``i`` tiles image ``i`` and three others
    drawn at random, each under the dataset's own (training) transform, around a random centre
    (:func:`mosaic`).  Four images' objects and contexts per view, objects at their usual scale,
    some cut by the quadrants' edges.  Draws from torch's generator, so a seeded loader (the
    feature cache's) makes the same views again."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        n = len(self.dataset)
        order = [i] + torch.randint(n, (3,)).tolist()
        order = [order[k] for k in torch.randperm(4).tolist()]
        parts = [self.dataset.view(j) for j in order]
        h, w = parts[0][0].shape[-2:]
        lo, hi = MOSAIC_CENTRE
        cx = int(w * (lo + (hi - lo) * torch.rand(()).item()))
        cy = int(h * (lo + (hi - lo) * torch.rand(()).item()))
        image, raw = mosaic(parts, (cx, cy))
        return image, self.dataset.make_target(raw)
