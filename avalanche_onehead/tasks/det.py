"""Object detection: boxes in network-input pixels, the FCOS-style loss and decoding of
``detection.py`` (configured by the model's ``detection`` settings), COCO mAP@[.5:.95] in
ORIGINAL pixels (torchmetrics, pycocotools backend), distillation of class scores and
confident boxes, box drawing, and its part of the predict command's output (the boxes with
class names, scores and COCO category ids; the boxes drawn).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from ..detection import BOX_CHANNELS, TRAINING_SETTINGS, DetectionConfig, Detections, decode_to_original, detection_loss, rescale_boxes
from .registry import PredictionContext, PredictionOutput, Target, TaskSpec, register

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: class-logit bias at initialisation: the focal-loss prior p = 0.01 (RetinaNet)
PRIOR_LOGIT = -4.595
#: boxes a prediction figure draws: those scored at least this, at most this many
DRAW_MIN_SCORE = 0.3
DRAW_MAX_BOXES = 5
#: COCO's object sizes, by box area: small < 32², medium < 96², large the rest
SIZES = ("small", "medium", "large")


@dataclass
class DetTarget(Target):
    """Boxes in network-input pixels (xyxy) plus what evaluation needs to go back.

    ``crowd_boxes`` are kept apart: ignored by the training loss, visible to the
    COCO evaluation (``iscrowd=1``).  ``orig_size`` is (height, width) of the
    image on disk and ``input_size`` the (height, width) the boxes refer to.
    """

    boxes: Tensor
    labels: Tensor
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    crowd_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    image_id: int = -1
    orig_size: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] = (0, 0)
    task = "det"

    def to(self, device: torch.device | str, **kwargs: Any) -> "DetTarget":
        return replace(
            self,
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            crowd_boxes=self.crowd_boxes.to(device),
            crowd_labels=self.crowd_labels.to(device),
        )

    def to_original(self, boxes: Tensor) -> Tensor:
        """Map xyxy boxes from network-input pixels back to original pixels."""
        return rescale_boxes(boxes, self.input_size, self.orig_size)


@dataclass
class DetTargets:
    """A list of :class:`DetTarget` that moves as one (the collated detection target)."""

    items: list[DetTarget]

    def to(self, device: torch.device | str, **kwargs: Any) -> "DetTargets":
        return DetTargets([t.to(device) for t in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DetTarget:
        return self.items[i]


#: the model config's field holding detection's settings (``DetectionConfig`` as a dict)
SETTINGS_FIELD = "detection"


def settings(model_cfg: Any, head_stride: int | None = None) -> dict[str, Any]:
    """The model config's ``detection`` settings, which the loss, the decoding and the
    evaluator take; checked against the stride of the head's output when it is given."""
    cfg = DetectionConfig(**getattr(model_cfg, SETTINGS_FIELD))
    if head_stride is not None and head_stride != cfg.stride:
        raise ValueError(f"head stride {cfg.stride} != backbone's first stride {head_stride}")
    return {"cfg": cfg}


def box_loss(raw: Tensor, targets: DetTargets, cfg: DetectionConfig = DetectionConfig()) -> dict[str, Tensor]:
    return detection_loss(raw, targets.items, cfg)


class DetEvaluator:
    """COCO mAP@[.5:.95], mAP@0.5, mAP@0.75 and mAP by object size (pycocotools backend) in
    original pixels."""

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
        # COCO's split by box area in original pixels (< 32², < 96², larger); a size with no
        # ground-truth box (COCO's -1) is left out
        for size in SIZES:
            if float(res[f"map_{size}"]) >= 0:
                out[f"mAP_{size}"] = float(res[f"map_{size}"])
        classes = res.get("classes")
        per_class = res.get("map_per_class")
        if classes is not None and per_class is not None and per_class.numel() == classes.numel():
            for c, v in zip(classes.flatten().tolist(), per_class.flatten().tolist()):
                if v >= 0:
                    out[f"AP/{int(c)}"] = float(v)
        return out


def ground_truth_dict(t: DetTarget) -> dict:
    """A DetTarget as torchmetrics ground truth in original pixels, crowds flagged."""
    boxes = torch.cat([t.to_original(t.boxes), t.to_original(t.crowd_boxes)]).cpu()
    labels = torch.cat([t.labels, t.crowd_labels]).cpu()
    iscrowd = torch.cat([torch.zeros(len(t.labels), dtype=torch.long),
                         torch.ones(len(t.crowd_labels), dtype=torch.long)])
    return {"boxes": boxes.reshape(-1, 4).float(), "labels": labels.long(), "iscrowd": iscrowd}


def det_distillation(student: Tensor, teacher: Tensor, threshold: float) -> Tensor:
    """Soft class targets everywhere + box/centre-ness where the teacher is confident."""
    c = student.shape[1] - BOX_CHANNELS
    t_prob = torch.sigmoid(teacher[:, :c])
    cls_term = F.binary_cross_entropy_with_logits(student[:, :c], t_prob, reduction="none").sum(1)
    confident = t_prob.max(1).values > threshold  # (B, h, w)
    loss = cls_term.mean()
    if confident.any():
        box_s = student[:, c:c + 4].permute(0, 2, 3, 1)[confident]
        box_t = teacher[:, c:c + 4].permute(0, 2, 3, 1)[confident]
        ctr_s = student[:, c + 4][confident]
        ctr_t = torch.sigmoid(teacher[:, c + 4][confident])
        loss = loss + F.smooth_l1_loss(box_s, box_t) + F.binary_cross_entropy_with_logits(ctr_s, ctr_t)
    return loss


def init_output_bias(bias: Tensor, num_classes: int) -> None:
    """Class logits start at the focal-loss prior, box and centre-ness channels at 0."""
    nn.init.constant_(bias[:num_classes], PRIOR_LOGIT)


def draw_boxes(ax, raw: dict[str, Any], pred: Detections, names: list[str], panel: int) -> None:
    """The best predicted boxes solid (with class and score), the ground truth dashed."""
    from matplotlib.patches import Rectangle

    pred = Detections(pred.boxes.cpu(), pred.scores.cpu(), pred.labels.cpu())
    for b in raw["boxes"].tolist():
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ls="--", ec="white", lw=1.2))
    keep = (pred.scores >= DRAW_MIN_SCORE) & (torch.arange(len(pred.scores)) < DRAW_MAX_BOXES)
    for b, s, lab in zip(pred.boxes[keep].tolist(), pred.scores[keep].tolist(), pred.labels[keep].tolist()):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", lw=1.5))
        ax.text(b[0], b[1], f"{names[lab]} {s:.2f}", color="black", fontsize=6,
                bbox={"facecolor": "yellow", "alpha": 0.8, "pad": 1, "lw": 0})
    ax.set_title(f"top {int(keep.sum())} boxes ≥ {DRAW_MIN_SCORE} (truth dashed)", fontsize=8)


def detections_record(det: Detections, ctx: PredictionContext) -> list[dict[str, Any]]:
    """Its section of a prediction's JSON: every box the decoding keeps, in original pixels, with
    its class name, score and (detection's class keys are its COCO category ids) category id."""
    ids = ctx.class_keys
    boxes = []
    for b, s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        box = {"label": ctx.names[c], "class_index": int(c), "score": round(float(s), 4),
               "box_xyxy": [round(float(v), 1) for v in b]}
        if c < len(ids):
            box["category_id"] = int(ids[c])
        boxes.append(box)
    return boxes


def draw_predicted_boxes(ax: Axes, det: Detections, section: list[dict[str, Any]], ctx: PredictionContext) -> None:
    """The best boxes of the record (score at least ``ctx.min_score``, at most ``ctx.max_boxes``)."""
    from matplotlib.patches import Rectangle

    shown = [d for d in section if d["score"] >= ctx.min_score][:ctx.max_boxes]
    for d in shown:
        x0, y0, x1, y1 = d["box_xyxy"]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.8))
        ax.text(x0, y0, f"{d['label']} {d['score']:.2f}", color="black", fontsize=8, va="bottom",
                bbox={"facecolor": "yellow", "alpha": 0.85, "pad": 1, "lw": 0})
    ax.set_title(f"detection: {len(shown)} boxes with score ≥ {ctx.min_score:g}", fontsize=10)


PREDICT_OUTPUT = PredictionOutput(key="detections", record=detections_record, position=1,
                                  panel=draw_predicted_boxes, summary=lambda boxes: f"{len(boxes)} boxes")

DET = register(TaskSpec(
    name="det", label=1, title="object detection", metric_name="mAP", folder="mini_coco_det",
    num_classes=10, target=DetTarget, collate=DetTargets, loss=box_loss, decode=decode_to_original,
    make_evaluator=DetEvaluator, reader="benchmarks.readers:CocoDetection", extra_channels=BOX_CHANNELS,
    settings=settings, settings_field=SETTINGS_FIELD, training_settings=TRAINING_SETTINGS, distill=lambda student, teacher, lwf: det_distillation(student, teacher, lwf.det_threshold),
    init_output_bias=init_output_bias, draw=draw_boxes, predict_output=PREDICT_OUTPUT, secondary_metrics=("mAP50",),
    quality_bar=0.15, synthetic_writer="benchmarks.synthetic:write_det",
))
