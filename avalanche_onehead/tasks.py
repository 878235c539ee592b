"""The task registry: the one place that knows what belongs to each task.

A :class:`TaskSpec` names a task and bundles its fixed Avalanche task label,
headline metric, dataset folder, output channels, collate, loss, decoding and
evaluator.  Everything else (model, criterion, metrics, readers, CLIs) loops
over :data:`TASKS` instead of branching on task names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .detection import BOX_CHANNELS, DetectionConfig, decode_to_original, detection_loss
from .metrics import ClsEvaluator, DetEvaluator, SegEvaluator
from .targets import ClsTarget, DetTarget, DetTargets, SegTarget


def upsample_logits(raw: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of segmentation logits to a mask's size."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    return F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)


def class_map(raw: Tensor, size: Sequence[int]) -> Tensor:
    """(B, C, h, w) logits -> (B, H, W) class ids at ``size``: the argmax of the bilinearly
    upsampled logits, without upsampling every channel at every pixel.

    A bilinear output pixel is a convex combination of the 2 x 2 input cells around it.  So
    where all four cells have the same best class by a clear margin (inside regions, most of
    the image) that class is the answer, and a class whose best value over the four cells is
    below the best "worst cell" of another class can win nowhere between them.  Only the
    remaining pixels are interpolated, from their four cells and over the surviving classes.
    The margin is far above float rounding, so the shortcut is exact; interpolated pixels
    can differ from ``upsample_logits(...).argmax(1)`` on float near-ties only (1 pixel of
    the 60 VOC val images' 10.8 M, measured).  Several times faster at 480 x 640."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw.argmax(1)
    return torch.stack([_class_map_one(r, (int(size[0]), int(size[1]))) for r in raw.float()])


def _source_taps(out_size: int, in_size: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch's bilinear source cells and weights along one axis (``align_corners=False``)."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0
    return i0, i1, 1 - w1, w1


def _blocks(x: Tensor) -> list[Tensor]:
    """The four cells of every 2 x 2 block (i..i+1, j..j+1) of the last two dims, edges repeated."""
    x = torch.cat([x, x[..., -1:, :]], -2)
    x = torch.cat([x, x[..., -1:]], -1)
    return [x[..., :-1, :-1], x[..., :-1, 1:], x[..., 1:, :-1], x[..., 1:, 1:]]


def _class_map_one(raw: Tensor, size: tuple[int, int]) -> Tensor:
    c, h, w = raw.shape
    margin = 1e-4 * (1 + float(raw.abs().amax()))
    best, label = raw.max(0)
    runner_up = raw.scatter(0, label[None], float("-inf")).amax(0) if c > 1 else best - float("inf")
    labels, gaps = _blocks(label), _blocks(best - runner_up)
    settled = (labels[0] == labels[1]) & (labels[0] == labels[2]) & (labels[0] == labels[3])
    settled &= torch.stack(gaps).amin(0) > margin
    y0, y1, wy0, wy1 = _source_taps(size[0], h, raw.device)
    x0, x1, wx0, wx1 = _source_taps(size[1], w, raw.device)
    out = label.index_select(0, y0).index_select(1, x0)
    yy, xx = (~settled).index_select(0, y0).index_select(1, x0).nonzero(as_tuple=True)
    if yy.numel():
        cells = torch.stack(_blocks(raw))  # (4, C, h, w)
        floor = cells.amin(0).amax(0)  # per block: some class is at least this everywhere in it
        alive = cells.amax(0)[:, ~settled] >= floor[~settled] - margin
        keep = alive.any(1).nonzero().squeeze(1)
        if yy.numel() * keep.numel() > c * size[0] * size[1] // 4:  # mostly unsettled (untrained model)
            return upsample_logits(raw[None].contiguous(memory_format=torch.channels_last), size).argmax(1)[0]
        sub = raw.index_select(0, keep).permute(1, 2, 0)  # (h, w, K)
        # along x first, then along y: the order of PyTorch's kernel
        across = wx0[:, None] * sub.index_select(1, x0) + wx1[:, None] * sub.index_select(1, x1)  # (h, W, K)
        across = across.reshape(h * size[1], -1)
        v = (wy0[yy, None] * across.index_select(0, y0[yy] * size[1] + xx)
             + wy1[yy, None] * across.index_select(0, y1[yy] * size[1] + xx))
        out[yy, xx] = keep[v.argmax(1)]
    return out


def _seg_loss(raw: Tensor, masks: Tensor, det_cfg: DetectionConfig) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(upsample_logits(raw, masks.shape[-2:]), masks, ignore_index=255)}


def _det_loss(raw: Tensor, targets: DetTargets, det_cfg: DetectionConfig) -> dict[str, Tensor]:
    return detection_loss(raw, targets.items, det_cfg)


def _cls_loss(raw: Tensor, labels: Tensor, det_cfg: DetectionConfig) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(raw, labels)}


def _seg_decode(raw: Tensor, orig_size: tuple[int, int], det_cfg: DetectionConfig) -> Tensor:
    """(C, h, w) logits -> (H, W) class ids at the original image size."""
    return class_map(raw[None], orig_size)[0]


def _cls_decode(raw: Tensor, orig_size: tuple[int, int], det_cfg: DetectionConfig) -> Tensor:
    return raw.softmax(-1)


def _pool_cls(raw: Tensor) -> Tensor:
    """Classification logits are the spatial mean of the classification channels."""
    return raw.mean(dim=(2, 3))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: int  # Avalanche task label, fixed whatever the training order
    title: str
    metric_name: str  # headline key of the evaluator's ``compute()``
    folder: str  # default dataset folder under a data root
    num_classes: int
    extra_channels: int  # output channels beyond one per class
    collate: Callable[[list[Any]], Any]
    loss: Callable[[Tensor, Any, DetectionConfig], dict[str, Tensor]]
    make_evaluator: Callable[[int], Any]
    decode: Callable[[Tensor, tuple[int, int], DetectionConfig], Any]  # one image -> prediction
    reduce: Callable[[Tensor], Tensor] | None = None  # map -> output (e.g. pooling)
    subsample: Callable[[Any, int], Any] | None = None  # collated dense target -> every k-th pixel

    def out_channels(self, num_classes: int | None = None) -> int:
        return (num_classes or self.num_classes) + self.extra_channels


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="seg", label=0, title="semantic segmentation", metric_name="mIoU",
            folder="mini_voc_seg", num_classes=21, extra_channels=0,
            collate=lambda ts: torch.stack([t.mask for t in ts]),
            loss=_seg_loss, make_evaluator=SegEvaluator, decode=_seg_decode,
            subsample=lambda masks, k: masks[..., k // 2::k, k // 2::k],
        ),
        TaskSpec(
            name="det", label=1, title="object detection", metric_name="mAP",
            folder="mini_coco_det", num_classes=10, extra_channels=BOX_CHANNELS,
            collate=DetTargets, loss=_det_loss, make_evaluator=DetEvaluator, decode=decode_to_original,
        ),
        TaskSpec(
            name="cls", label=2, title="image classification", metric_name="Top-1",
            folder="imagenette_160", num_classes=10, extra_channels=0,
            collate=lambda ts: torch.tensor([t.label for t in ts], dtype=torch.long),
            loss=_cls_loss, make_evaluator=ClsEvaluator, decode=_cls_decode, reduce=_pool_cls,
        ),
    )
}

TARGET_TYPES = {"seg": SegTarget, "det": DetTarget, "cls": ClsTarget}
DEFAULT_ORDER = ("seg", "det", "cls")


def decode_batch(out, image_hw: Sequence[int], n: int, original_sizes, det_cfg: DetectionConfig,
                 tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Raw outputs of ``n`` images -> per image ``{task: prediction}`` in ORIGINAL pixels
    (``original_sizes`` (h, w) per image; the network-input size when not given)."""
    sizes = original_sizes or [tuple(image_hw)] * n
    return [{t: TASKS[t].decode(out[t][i], tuple(sizes[i]), det_cfg) for t in tasks} for i in range(n)]


def task_of_label(label: int) -> str:
    """Task name of an Avalanche task label."""
    for name, spec in TASKS.items():
        if spec.label == label:
            return name
    raise KeyError(f"no task has label {label}")


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``"seg,det"`` -> ``["seg", "det"]``; ``"all"`` -> the default order."""
    names = DEFAULT_ORDER if text == "all" else (
        [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    )
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or text!r}; known: {', '.join(TASKS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"task listed twice in {text!r}")
    return list(names)
