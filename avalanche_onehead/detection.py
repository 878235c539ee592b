"""Anchor-free, centre-based detection on one feature stride (FCOS style).

Every location of the stride-``s`` grid predicts ``C`` class logits, four
distances (left, top, right, bottom) to the box edges and one centre-ness logit.
A location is positive for a box when it lies inside the box and near its
centre; positives never depend on predicted boxes, so training starts from
step one.  Decoding keeps scores above a low threshold, applies per-class NMS
(``torchvision.ops.batched_nms``) and keeps at most ``max_detections``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

#: channels per location besides the class logits: l, t, r, b, centre-ness
BOX_CHANNELS = 5
#: regression is ``exp(x) * stride``; clamp keeps it finite early in training
_MAX_LOG_DISTANCE = 8.0


@dataclass(frozen=True)
class DetectionConfig:
    stride: int = 8
    center_radius: float = 1.5  # in strides; grows with the box, see ``assign``
    center_fraction: float = 0.2  # of the box's shorter side
    score_threshold: float = 0.05
    nms_iou: float = 0.6
    pre_nms_topk: int = 1000
    max_detections: int = 100
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # weigh each box's positive locations by 1 / their count (times the image's mean count per
    # box), so every box carries the same share of the positive loss.  With one stride and a
    # window that grows with the box, the large boxes hold most positives (87 % on mini-COCO's
    # train split at 512 px, with 31 % of the boxes).  Measured (report.md §0.5): within noise of
    # the default on two seeds; a fixed window instead (``center_fraction`` 0) lifted medium
    # boxes' AP and halved large boxes'
    balance_boxes: bool = False
    # weight of the GIoU term against the focal and centre-ness terms (FCOS: 1; ATSS and GFL: 2).
    # The box fit (report.md §A.3) finds boxes sized worse than they are classified
    box_loss_weight: float = 1.0
    # quality focal loss (GFL, Li et al. 2020): a positive's class target is the IoU of the box it
    # predicts with its true box (not 1), weighed by |target - p|^gamma instead of the focal
    # loss's alpha and (1 - p)^gamma, so the class score also ranks how well a box is placed,
    # which mAP over IoU 0.5-0.95 rewards.  Measured (report.md §A.3, seed 1): mAP 0.0525 against
    # 0.0527 with the focal loss
    quality_focal: bool = False


#: the settings only training reads (target assignment and loss); the others also decode
#: predictions, so they shape every evaluation of detection, also before its own stage
TRAINING_SETTINGS = ("center_radius", "center_fraction", "focal_alpha", "focal_gamma", "balance_boxes",
                     "box_loss_weight", "quality_focal")


def grid_centers(h: int, w: int, stride: int, device=None) -> Tensor:
    """(h*w, 2) pixel centres (x, y) of a stride-``stride`` grid, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def assign(
    boxes: Tensor, labels: Tensor, centers: Tensor, cfg: DetectionConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Targets for one image.

    Returns ``(cls_index (P,), box_targets (P, 4) xyxy, positive mask (P,))`` with
    ``cls_index = -1`` for negatives.  Among several boxes the smallest wins.
    """
    return targets_of(boxes, labels, *assigned_box(boxes, centers, cfg))


def targets_of(boxes: Tensor, labels: Tensor, best: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`assign`'s targets from :func:`assigned_box`'s answer."""
    if boxes.numel() == 0:
        return torch.full_like(best, -1), torch.zeros(len(best), 4, device=best.device), pos
    return torch.where(pos, labels[best], torch.full_like(best, -1)), boxes[best], pos


def assigned_box(boxes: Tensor, centers: Tensor, cfg: DetectionConfig) -> tuple[Tensor, Tensor]:
    """Which box each location is positive for: ``(box index (P,), positive mask (P,))``; the
    index of a negative location is meaningless (0)."""
    p = centers.shape[0]
    if boxes.numel() == 0:
        return (torch.zeros(p, dtype=torch.long, device=centers.device),
                torch.zeros(p, dtype=torch.bool, device=centers.device))
    x, y = centers[:, 0:1], centers[:, 1:2]  # (P,1)
    x0, y0, x1, y1 = (boxes[:, i][None] for i in range(4))  # (1,N)
    inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    short = torch.minimum(x1 - x0, y1 - y0)
    radius = torch.clamp(short * cfg.center_fraction, min=cfg.center_radius * cfg.stride)
    near = ((x - cx).abs() <= radius) & ((y - cy).abs() <= radius)
    ok = inside & near
    # a box too small to contain any centre still gets the cell its centre falls in
    cell = ((x - cx).abs() <= cfg.stride / 2) & ((y - cy).abs() <= cfg.stride / 2)
    ok = ok | (cell & ~ok.any(dim=0, keepdim=True))
    area = ((x1 - x0) * (y1 - y0)).expand(p, -1)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=1)
    return best, torch.isfinite(best_area)


def box_weights(best: Tensor, pos: Tensor) -> Tensor:
    """Per positive location, ``mean positives per box / its box's positives``: each box then
    weighs the same and the positives still sum to their count."""
    owner = best[pos]
    counts = torch.bincount(owner)[owner].float()
    return (len(owner) / owner.unique().numel()) / counts


def distances_to_boxes(centers: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([centers - ltrb[:, :2], centers + ltrb[:, 2:]], dim=1)


def centerness(centers: Tensor, boxes: Tensor) -> Tensor:
    l_ = centers[:, 0] - boxes[:, 0]
    t_ = centers[:, 1] - boxes[:, 1]
    r_ = boxes[:, 2] - centers[:, 0]
    b_ = boxes[:, 3] - centers[:, 1]
    lr = torch.stack([l_, r_], 1).clamp(min=1e-6)
    tb = torch.stack([t_, b_], 1).clamp(min=1e-6)
    return torch.sqrt((lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values))


def _split(raw: Tensor, num_classes: int, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """(C+5, h, w) map -> class logits (P,C), distances (P,4) px, centre-ness logits (P,)."""
    flat = raw.flatten(1).t()  # (P, C+5)
    cls_logits = flat[:, :num_classes]
    ltrb = torch.exp(flat[:, num_classes : num_classes + 4].clamp(max=_MAX_LOG_DISTANCE)) * stride
    ctr = flat[:, num_classes + 4]
    return cls_logits, ltrb, ctr


def quality_focal_loss(logits: Tensor, quality: Tensor, gamma: float) -> Tensor:
    """Element-wise quality focal loss: BCE towards a soft target in [0, 1] (the IoU at a
    positive's class, 0 elsewhere) scaled by ``|quality - sigmoid(logits)| ** gamma``."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return bce * (quality - p).abs().pow(gamma)


def detection_loss(raw: Tensor, targets, cfg: DetectionConfig) -> dict[str, Tensor]:
    """Focal (or quality focal) + GIoU + centre-ness BCE for a batch of raw maps (B, C+5, h, w)."""
    b, ch, h, w = raw.shape
    num_classes = ch - BOX_CHANNELS
    centers = grid_centers(h, w, cfg.stride, raw.device)
    focal, giou, ctr_loss, n_pos = raw.new_zeros(()), raw.new_zeros(()), raw.new_zeros(()), 0
    ctr_weight_sum = raw.new_zeros(())
    for i in range(b):
        cls_logits, ltrb, ctr = _split(raw[i], num_classes, cfg.stride)
        t = targets[i]
        best, pos = assigned_box(t.boxes, centers, cfg)
        cls_index, box_t, pos = targets_of(t.boxes, t.labels, best, pos)
        pred_boxes = distances_to_boxes(centers[pos], ltrb[pos])
        onehot = torch.zeros_like(cls_logits)
        if cfg.quality_focal and pos.any():
            onehot[pos, cls_index[pos]] = box_iou(pred_boxes.detach(), box_t[pos]).diagonal().clamp(min=0)
        else:
            onehot[pos, cls_index[pos]] = 1.0
        weight = box_weights(best, pos) if cfg.balance_boxes and pos.any() else None
        focal_terms = (quality_focal_loss(cls_logits, onehot, cfg.focal_gamma) if cfg.quality_focal else
                       sigmoid_focal_loss(cls_logits, onehot, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                          reduction="none"))
        if weight is not None:
            focal_terms = torch.cat([focal_terms[~pos], focal_terms[pos] * weight[:, None]])
        focal = focal + focal_terms.sum()
        if pos.any():
            ctr_t = centerness(centers[pos], box_t[pos])
            ctr_terms = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="none")
            if weight is not None:
                ctr_t, ctr_terms = ctr_t * weight, ctr_terms * weight
            giou = giou + (generalized_box_iou_loss(pred_boxes, box_t[pos], reduction="none") * ctr_t).sum()
            ctr_weight_sum = ctr_weight_sum + ctr_t.sum()
            ctr_loss = ctr_loss + ctr_terms.sum()
            n_pos += int(pos.sum())
    norm = max(n_pos, 1)
    return {
        "focal": focal / norm,
        "giou": cfg.box_loss_weight * giou / ctr_weight_sum.clamp(min=1e-6),
        "centerness": ctr_loss / norm,
    }


def centre_cell_fit(raw: Tensor, boxes: Tensor, labels: Tensor, cfg: DetectionConfig) -> dict[str, Tensor]:
    """How well one image's raw map (C+5, h, w) fits its boxes (xyxy, network-input pixels) at
    each box's centre cell, the location every assignment makes positive: the IoU of the box
    predicted there, its width and height over the true ones, and the probability it gives the
    true class.  A diagnosis of training, not a metric: it tells a regression that cannot size
    the boxes from a classification that cannot name them."""
    num_classes = raw.shape[0] - BOX_CHANNELS
    h, w = raw.shape[1:]
    cls_logits, ltrb, _ = _split(raw.float(), num_classes, cfg.stride)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx // cfg.stride).long().clamp(0, w - 1)
    row = (cy // cfg.stride).long().clamp(0, h - 1)
    cell = row * w + col
    centers = grid_centers(h, w, cfg.stride, raw.device)[cell]
    pred = distances_to_boxes(centers, ltrb[cell])
    return {"iou": box_iou(pred, boxes).diagonal(),
            "width_ratio": (pred[:, 2] - pred[:, 0]) / (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6),
            "height_ratio": (pred[:, 3] - pred[:, 1]) / (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6),
            "class_probability": torch.sigmoid(cls_logits[cell, labels])}


@dataclass
class Detections:
    """Per-image detections: xyxy boxes, scores, contiguous class indices."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def decode(raw: Tensor, cfg: DetectionConfig) -> Detections:
    """One image's raw map (C+5, h, w) -> detections in network-input pixels."""
    num_classes = raw.shape[0] - BOX_CHANNELS
    h, w = raw.shape[1:]
    centers = grid_centers(h, w, cfg.stride, raw.device)
    cls_logits, ltrb, ctr = _split(raw.float(), num_classes, cfg.stride)
    scores = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr)[:, None]).flatten()
    keep = scores > cfg.score_threshold
    idx = keep.nonzero().squeeze(1)
    if idx.numel() > cfg.pre_nms_topk:
        idx = idx[scores[idx].topk(cfg.pre_nms_topk).indices]
    loc, labels = idx // num_classes, idx % num_classes
    boxes = distances_to_boxes(centers[loc], ltrb[loc])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w * cfg.stride)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h * cfg.stride)
    s = scores[idx]
    keep = first_kept(boxes, s, labels, cfg.nms_iou, cfg.max_detections)
    return Detections(boxes[keep], s[keep], labels[keep])


def first_kept(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, k: int) -> Tensor:
    """``batched_nms(boxes, scores, labels, iou)[:k]``, from the best-scored boxes alone when
    they suffice: greedy NMS decides a box by the higher-scored boxes only, so once ``k`` boxes
    survive among the top ``n``, no lower box can enter the first ``k``.  An untrained or
    weak model leaves ~1000 candidates, and NMS over all of them was most of the decoding."""
    n = 4 * k
    if n < scores.numel():
        top = scores.argsort(descending=True, stable=True)[:n]
        kept = batched_nms(boxes[top], scores[top], labels[top], iou)
        if kept.numel() >= k:
            return top[kept[:k]]
    return batched_nms(boxes, scores, labels, iou)[:k]


def rescale_boxes(boxes: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """xyxy boxes from an image of size ``from_hw`` (h, w) to one of size ``to_hw``."""
    (fh, fw), (th, tw) = from_hw, to_hw
    return boxes * boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])


def decode_to_original(raw: Tensor, orig_size: tuple[int, int],
                       cfg: DetectionConfig = DetectionConfig()) -> Detections:
    """One image's raw map -> detections in ORIGINAL image pixels ((h, w) = ``orig_size``)."""
    d = decode(raw, cfg)
    input_hw = (raw.shape[-2] * cfg.stride, raw.shape[-1] * cfg.stride)
    return Detections(rescale_boxes(d.boxes, input_hw, orig_size), d.scores, d.labels)
