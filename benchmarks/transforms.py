"""Joint image/box/mask transforms on torchvision.transforms.v2 and tv_tensors.

Evaluation is a plain resize to ``image_size`` x ``image_size`` (bicubic, like the
challenge's evaluator); training adds a flip, a scale/translate jitter and
colour jitter.  Boxes and masks move with the image; masks use nearest
neighbour and fill new pixels with 255 (ignore).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
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
