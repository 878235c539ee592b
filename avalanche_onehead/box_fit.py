"""Where detection loses: how well a checkpoint sizes and names the boxes of a split.

At each ground-truth box's centre cell (positive under every assignment) the detection output
predicts one box and class scores; :func:`~avalanche_onehead.detection.centre_cell_fit` measures
that box's IoU with the truth, its width and height over the true ones and the probability of
the true class.  Grouped by COCO's sizes (box area in original pixels: small < 32², medium
< 96², large the rest), the medians say whether a weak mAP comes from boxes of the wrong size
(ratios far from 1), from the wrong class (low probability), or from neither.  On the training
split it tells under-fitting from over-fitting.  ``python experiments/box_fit.py --weights W``
prints it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_area

from .detection import centre_cell_fit
from .tasks.det import DET, SIZES

#: COCO's area bounds of the sizes, in original pixels
SIZE_AREAS = (32 ** 2, 96 ** 2)


def size_of(area: torch.Tensor) -> torch.Tensor:
    """Index into :data:`~avalanche_onehead.tasks.det.SIZES` of each box area."""
    return torch.bucketize(area, torch.tensor(SIZE_AREAS, dtype=area.dtype), right=True)


def summarize_fit(fits: dict[str, torch.Tensor], sizes: torch.Tensor) -> dict[str, dict[str, float]]:
    """Medians of the centre-cell fit per size (sizes without a box left out)."""
    out = {}
    for i, name in enumerate(SIZES):
        pick = sizes == i
        if not pick.any():
            continue
        f = {k: v[pick] for k, v in fits.items()}
        out[name] = {"boxes": int(pick.sum()), "median_iou": round(float(f["iou"].median()), 3),
                     "share_iou_at_least_0.5": round(float((f["iou"] >= 0.5).float().mean()), 3),
                     "median_width_ratio": round(float(f["width_ratio"].median()), 3),
                     "median_height_ratio": round(float(f["height_ratio"].median()), 3),
                     "median_class_probability": round(float(f["class_probability"].median()), 3)}
    return out


@torch.no_grad()
def box_fit_checkpoint(weights: str | Path, data_root: str | Path | None = None, split: str = "train",
                       batch: int = 8, max_images: int | None = None) -> dict[str, Any]:
    """The centre-cell fit of a checkpoint's detection output on a split, by size."""
    from .onnx_runtime import open_checkpoint
    from .targets import collate_onehead

    opened = open_checkpoint(weights, data_root)
    model, task = opened.model, DET.name
    if task not in model.task_order:
        raise ValueError(f"{weights}: the model has no detection output")
    ds = opened.split(task, split, max_images)
    root = opened.root
    cfg = model.task_settings[task]["cfg"]
    fits: dict[str, list[torch.Tensor]] = {}
    sizes = []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=collate_onehead)
    with model.producing([task]):
        for images, targets in loader:
            part = targets.parts[task]
            for raw, t in zip(model(images)[task][part.index], part.target.items):
                for k, v in centre_cell_fit(raw, t.boxes, t.labels, cfg).items():
                    fits.setdefault(k, []).append(v)
                sizes.append(size_of(box_area(t.to_original(t.boxes))))
    if not sizes:
        raise ValueError(f"{root.path}: no detection image in split {split!r}")
    by_size = summarize_fit({k: torch.cat(v) for k, v in fits.items()}, torch.cat(sizes))
    return {"weights": str(weights), "data_root": str(root.path), "split": split, "images": len(ds),
            "by_size": by_size}
