"""Dataset-level task metrics built on torchmetrics (which wraps pycocotools for mAP).

Each evaluator consumes the model's raw outputs for the samples of its task and
the collated targets, decodes them through the task registry and accumulates
one dataset-level state: a 21-class confusion matrix for mIoU (255 ignored,
classes absent from both prediction and ground truth left out, as torchmetrics
does), COCO mAP@[.5:.95] in ORIGINAL image pixels, and Top-1.  ``compute``
returns plain Python floats (TensorBoard drops numpy scalars).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from .detection import DetectionConfig, decode_to_original
from .targets import DetTargets


class SegEvaluator:
    """mIoU over one dataset-level confusion matrix."""

    def __init__(self, num_classes: int):
        self.metric = MulticlassJaccardIndex(num_classes, ignore_index=255, average="macro")

    def reset(self) -> None:
        self.metric.reset()

    def update_masks(self, pred: Tensor, mask: Tensor) -> None:
        self.metric.update(pred.cpu(), mask.cpu())

    def update(self, raw: Tensor, target: Tensor) -> None:
        from .tasks import class_map

        self.update_masks(class_map(raw, target.shape[-2:]), target)

    def compute(self) -> dict[str, float]:
        confmat = self.metric.confmat.double()
        tp = confmat.diag()
        union = confmat.sum(0) + confmat.sum(1) - tp
        per_class = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        out = {"mIoU": float(self.metric.compute()) if confmat.sum() > 0 else 0.0,
               "pixel_acc": float(tp.sum() / confmat.sum().clamp(min=1))}
        out.update({f"IoU/{i}": float(v) for i, v in enumerate(per_class.tolist()) if v == v})
        return out


class DetEvaluator:
    """COCO mAP@[.5:.95] and mAP@0.5 (pycocotools backend) in original pixels."""

    def __init__(self, num_classes: int, cfg: DetectionConfig | None = None):
        self.cfg = cfg or DetectionConfig()
        self.num_classes = num_classes
        self.metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools"
        )

    def reset(self) -> None:
        self.metric.reset()

    def update_detections(self, preds: list[dict], gts: list[dict]) -> None:
        self.metric.update(preds, gts)

    def update(self, raw: Tensor, target: DetTargets) -> None:
        preds, gts = [], []
        for r, t in zip(raw, target.items):
            d = decode_to_original(r, t.orig_size, self.cfg)
            preds.append({"boxes": d.boxes.cpu(), "scores": d.scores.cpu(),
                          "labels": d.labels.cpu()})
            gts.append(ground_truth_dict(t))
        self.update_detections(preds, gts)

    def compute(self) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = self.metric.compute()
        out = {"mAP": max(float(res["map"]), 0.0), "mAP50": max(float(res["map_50"]), 0.0),
               "mAP75": max(float(res["map_75"]), 0.0)}
        classes = res.get("classes")
        per_class = res.get("map_per_class")
        if classes is not None and per_class is not None and per_class.numel() == classes.numel():
            for c, v in zip(classes.flatten().tolist(), per_class.flatten().tolist()):
                if v >= 0:
                    out[f"AP/{int(c)}"] = float(v)
        return out


def ground_truth_dict(t) -> dict:
    """A DetTarget as torchmetrics ground truth in original pixels, crowds flagged."""
    boxes = torch.cat([t.to_original(t.boxes), t.to_original(t.crowd_boxes)]).cpu()
    labels = torch.cat([t.labels, t.crowd_labels]).cpu()
    iscrowd = torch.cat([torch.zeros(len(t.labels), dtype=torch.long),
                         torch.ones(len(t.crowd_labels), dtype=torch.long)])
    return {"boxes": boxes.reshape(-1, 4).float(), "labels": labels.long(), "iscrowd": iscrowd}


class ClsEvaluator:
    """Top-1 accuracy over all samples (plus per-class accuracy)."""

    def __init__(self, num_classes: int):
        self.top1 = MulticlassAccuracy(num_classes, average="micro")
        self.per_class = MulticlassAccuracy(num_classes, average="none")

    def reset(self) -> None:
        self.top1.reset()
        self.per_class.reset()

    def update(self, raw: Tensor, target: Tensor) -> None:
        pred = raw.detach().cpu()
        self.top1.update(pred, target.cpu())
        self.per_class.update(pred, target.cpu())

    def compute(self) -> dict[str, float]:
        if int(self.top1.tp.sum() + self.top1.fn.sum()) == 0:
            return {"Top-1": 0.0}
        out = {"Top-1": float(self.top1.compute())}
        out.update({f"Acc/{i}": float(v) for i, v in enumerate(self.per_class.compute().tolist())})
        return out
