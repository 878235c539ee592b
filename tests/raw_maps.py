"""What a perfect detector would emit: the test oracle of decoding and evaluation."""
from __future__ import annotations

import torch
from torch import Tensor

from avalanche_onehead.detection import BOX_CHANNELS, DetectionConfig, assign, grid_centers


def encode_targets_as_raw(boxes: Tensor, labels: Tensor, num_classes: int, size: tuple[int, int],
                          cfg: DetectionConfig, logit: float = 10.0) -> Tensor:
    """The raw map a perfect model would emit for these boxes (decoding round trips)."""
    h, w = size[0] // cfg.stride, size[1] // cfg.stride
    centers = grid_centers(h, w, cfg.stride, boxes.device)
    cls_index, box_t, pos = assign(boxes, labels, centers, cfg)
    raw = torch.full((centers.shape[0], num_classes + BOX_CHANNELS), -logit)
    raw[:, num_classes : num_classes + 4] = 0.0
    if pos.any():
        c = centers[pos]
        ltrb = torch.cat([c - box_t[pos, :2], box_t[pos, 2:] - c], 1).clamp(min=1e-3)
        raw[pos, num_classes : num_classes + 4] = torch.log(ltrb / cfg.stride)
        raw[pos, cls_index[pos]] = logit
        raw[pos, num_classes + 4] = logit
    return raw.t().reshape(num_classes + BOX_CHANNELS, h, w)
