"""FCOS-style detection: assignment, encode/decode round trip, mapping to original pixels, loss."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import box_iou, sigmoid_focal_loss

from avalanche_onehead.detection import (
    BOX_CHANNELS,
    DetectionConfig,
    assign,
    assigned_box,
    box_weights,
    decode,
    decode_to_original,
    detection_loss,
    grid_centers,
    quality_focal_loss,
)
from avalanche_onehead.tasks.det import DetTarget
from raw_maps import encode_targets_as_raw

CFG = DetectionConfig(stride=8)
SIZE = (128, 128)
NUM_CLASSES = 10

# a large box, two overlapping boxes of different classes (IoU ~0.6), a tiny box
# (5 px, smaller than the stride: no cell centre lies inside it), a box on the border
BOXES = torch.tensor([
    [10.0, 12.0, 60.0, 70.0],
    [50.0, 40.0, 110.0, 100.0],
    [60.0, 50.0, 115.0, 105.0],
    [100.0, 8.0, 105.0, 13.0],
    [0.0, 90.0, 30.0, 128.0],
])
LABELS = torch.tensor([1, 3, 7, 2, 0])


def _match(pred_boxes, pred_labels, gt_boxes, gt_labels):
    """For each GT box the IoU of the best prediction with the same label."""
    iou = box_iou(gt_boxes, pred_boxes)
    same = gt_labels[:, None] == pred_labels[None, :]
    return torch.where(same, iou, torch.zeros_like(iou)).max(dim=1).values


def test_encode_decode_round_trip_recovers_every_box():
    assert float(box_iou(BOXES[1:2], BOXES[2:3])) > 0.5  # the pair really overlaps
    raw = encode_targets_as_raw(BOXES, LABELS, NUM_CLASSES, SIZE, CFG)
    assert raw.shape == (NUM_CLASSES + BOX_CHANNELS, SIZE[0] // CFG.stride, SIZE[1] // CFG.stride)
    det = decode(raw, CFG)
    # NMS collapses the many positive cells of each box into one detection per box
    assert len(det.boxes) == len(BOXES)
    assert sorted(det.labels.tolist()) == sorted(LABELS.tolist())
    best = _match(det.boxes, det.labels, BOXES, LABELS)
    assert (best > 0.95).all(), best
    assert (det.scores > 0.99).all()


def test_round_trip_survives_every_box_alone():
    for box, label in zip(BOXES, LABELS):
        det = decode(encode_targets_as_raw(box[None], label[None], NUM_CLASSES, SIZE, CFG), CFG)
        assert len(det.boxes) == 1
        assert int(det.labels[0]) == int(label)
        assert float(box_iou(det.boxes, box[None])) > 0.95


def test_empty_image_decodes_to_nothing():
    raw = encode_targets_as_raw(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), NUM_CLASSES, SIZE, CFG)
    det = decode(raw, CFG)
    assert det.boxes.shape == (0, 4) and det.scores.numel() == 0 and det.labels.numel() == 0


def test_decode_to_original_maps_to_original_pixels():
    orig = (240, 320)  # (h, w): x scales by 320/128, y by 240/128
    raw = encode_targets_as_raw(BOXES, LABELS, NUM_CLASSES, SIZE, CFG)
    det = decode_to_original(raw, orig, CFG)
    expected = BOXES * torch.tensor([320 / 128, 240 / 128, 320 / 128, 240 / 128])
    best = _match(det.boxes, det.labels, expected, LABELS)
    assert (best > 0.95).all(), best
    assert float(det.boxes[:, 0::2].max()) <= orig[1] + 1e-4
    assert float(det.boxes[:, 1::2].max()) <= orig[0] + 1e-4
    # the same thing the evaluator's ground truth does with DetTarget.to_original
    t = DetTarget(BOXES, LABELS, orig_size=orig, input_size=SIZE)
    assert torch.allclose(t.to_original(BOXES), expected)
    # scores and labels do not change with the mapping
    plain = decode(raw, CFG)
    assert torch.equal(plain.labels, det.labels) and torch.allclose(plain.scores, det.scores)


def test_decode_honours_max_detections():
    # every cell of a 16x16 grid fires for every class with a 16 px box: neighbouring
    # boxes overlap at IoU 1/3 < nms_iou, so NMS alone would keep 2560 of them
    raw = torch.full((NUM_CLASSES + BOX_CHANNELS, 16, 16), 10.0)
    raw[NUM_CLASSES:NUM_CLASSES + 4] = 0.0  # distances exp(0) * stride = 8 px
    det = decode(raw, CFG)
    assert len(det.boxes) == CFG.max_detections == 100
    small = DetectionConfig(stride=8, max_detections=7)
    assert len(decode(raw, small).boxes) == 7
    # highest scores first
    assert torch.all(det.scores[:-1] >= det.scores[1:])


def test_decode_honours_score_threshold():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(NUM_CLASSES + BOX_CHANNELS, 16, 16, generator=g) * 2
    raw[NUM_CLASSES:NUM_CLASSES + 4] = raw[NUM_CLASSES:NUM_CLASSES + 4].clamp(-1, 1)
    cls = raw[:NUM_CLASSES].flatten(1)
    ctr = raw[NUM_CLASSES + 4].flatten()
    score = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)[None])  # (C, P)
    for thr in (0.05, 0.5, 0.8):
        cfg = DetectionConfig(stride=8, score_threshold=thr, max_detections=10_000, pre_nms_topk=10_000)
        det = decode(raw, cfg)
        assert (det.scores > thr).all()
        assert len(det.boxes) <= int((score > thr).sum())
        # every class that has a location above the threshold keeps at least one detection
        assert set(det.labels.tolist()) == set((score > thr).any(dim=1).nonzero().flatten().tolist())
    # nothing passes a threshold above every score
    top = float(score.max())
    assert len(decode(raw, DetectionConfig(stride=8, score_threshold=top)).boxes) == 0


def _positives_per_box(boxes, labels, cfg=CFG, size=SIZE):
    centers = grid_centers(size[0] // cfg.stride, size[1] // cfg.stride, cfg.stride)
    cls_index, box_t, pos = assign(boxes, labels, centers, cfg)
    owner = torch.full((len(centers),), -1)
    for j, b in enumerate(boxes):
        owner[pos & (box_t == b).all(dim=1)] = j
    return centers, cls_index, box_t, pos, owner


def test_assign_gives_smaller_box_priority_and_every_box_a_positive():
    _, cls_index, box_t, pos, owner = _positives_per_box(BOXES, LABELS)
    for j in range(len(BOXES)):
        assert int((owner == j).sum()) >= 1, f"box {j} has no positive location"
    assert torch.equal(cls_index[pos], LABELS[owner[pos]])
    assert (cls_index[~pos] == -1).all()
    # where the overlapping boxes 1 and 2 both claim a cell, the smaller (2) wins
    area = (BOXES[:, 2] - BOXES[:, 0]) * (BOXES[:, 3] - BOXES[:, 1])
    assert area[2] < area[1]
    # swap the box order: the result of the contest must not depend on it
    order = torch.tensor([2, 1, 0, 3, 4])
    _, cls_b, box_b, pos_b, _ = _positives_per_box(BOXES[order], LABELS[order])
    assert torch.equal(pos, pos_b) and torch.equal(cls_index, cls_b) and torch.equal(box_t[pos], box_b[pos])
    # in every cell that is positive for both boxes in isolation, box 2 is the target
    _, _, _, pos1, _ = _positives_per_box(BOXES[1:2], LABELS[1:2])
    _, _, _, pos2, _ = _positives_per_box(BOXES[2:3], LABELS[2:3])
    contested = pos1 & pos2
    assert contested.any()
    assert (owner[contested] == 2).all()
    assert (cls_index[contested] == LABELS[2]).all()


def test_center_fraction_sets_how_positives_grow_with_the_box():
    """``center_fraction`` 0 keeps FCOS's fixed centre window (radius 1.5 strides): a box 8x the
    side of another gets as many positives, so large boxes cannot take most of the loss.  At 0.2
    the window grows with the short side: the large box gets many times more."""
    size = (512, 512)
    small = torch.tensor([[100.0, 100.0, 148.0, 148.0]])  # 48 px: the window is the 1.5-stride floor
    large = torch.tensor([[68.0, 68.0, 452.0, 452.0]])  # 384 px, centred on a cell like the small one
    label = torch.tensor([0])

    def count(box, fraction):
        cfg = DetectionConfig(stride=8, center_fraction=fraction)
        return int(_positives_per_box(box, label, cfg, size)[3].sum())

    fixed = (count(small, 0.0), count(large, 0.0))
    growing = (count(small, 0.2), count(large, 0.2))
    assert fixed == (9, 9)  # the 3x3 cells within 12 px of the centre
    assert growing[0] == 9 and growing[1] == (2 * (384 * 0.2 // 8) + 1) ** 2  # |dx|, |dy| <= 76.8 px
    assert growing[1] > 30 * fixed[1]


def test_balanced_boxes_weigh_the_same_and_keep_the_positives_total():
    """``balance_boxes``: a box's positive locations share one equal weight per box; the weights
    still sum to the number of positives, so the loss keeps its scale."""
    boxes = torch.tensor([[100.0, 100.0, 148.0, 148.0], [68.0, 200.0, 452.0, 500.0], [300.0, 20.0, 340.0, 90.0]])
    cfg = DetectionConfig(stride=8)
    best, pos = assigned_box(boxes, grid_centers(64, 64, 8), cfg)
    w = box_weights(best, pos)
    owner = best[pos]
    per_box = torch.stack([w[owner == j].sum() for j in range(len(boxes))])
    counts = torch.bincount(owner)
    assert counts.max() > 10 * counts.min()  # the large box holds most positives
    assert torch.allclose(per_box, per_box[0].expand(3))
    assert math.isclose(float(w.sum()), int(pos.sum()), rel_tol=1e-6)


def test_balanced_loss_gives_the_small_box_its_share():
    """With a large and a small box, balancing raises the small box's part of the focal term and
    changes nothing for one box alone (every weight is then 1)."""
    small = torch.tensor([[100.0, 100.0, 148.0, 148.0]])
    large = torch.tensor([[68.0, 200.0, 452.0, 500.0]])
    labels = torch.tensor([0, 1])
    torch.manual_seed(0)
    raw = torch.randn(1, NUM_CLASSES + BOX_CHANNELS, 64, 64)
    plain, balanced = DetectionConfig(stride=8), DetectionConfig(stride=8, balance_boxes=True)

    def loss(boxes, labs, cfg, r=raw):
        return detection_loss(r, [DetTarget(boxes=boxes, labels=labs)], cfg)

    one_p, one_b = loss(large, labels[1:], plain), loss(large, labels[1:], balanced)
    assert all(torch.allclose(one_p[k], one_b[k], rtol=1e-5) for k in one_p)
    # the gradient the small box's locations get, against the large box's
    both = torch.cat([small, large])

    def share(cfg):
        r = raw.clone().requires_grad_(True)
        sum(loss(both, labels, cfg, r).values()).backward()
        best, pos = assigned_box(both, grid_centers(64, 64, 8), cfg)
        g = r.grad[0, :NUM_CLASSES].flatten(1).abs().sum(0)
        return float(g[pos & (best == 0)].sum() / g[pos].sum())

    assert share(balanced) > 2 * share(plain)
    assert share(balanced) > 0.3


def test_assign_tiny_box_inside_a_large_box():
    # the tiny box holds the cell centre (60, 60) on its edge, like BOXES[3]
    boxes = torch.tensor([[8.0, 8.0, 120.0, 120.0], [60.0, 60.0, 65.0, 65.0]])
    labels = torch.tensor([4, 5])
    _, cls_index, _, pos, owner = _positives_per_box(boxes, labels)
    assert int((owner == 1).sum()) >= 1  # the tiny box gets the cell its centre falls in
    assert int((owner == 0).sum()) >= 1  # and the large box keeps the others
    centre_cell = (62 // 8) * 16 + (62 // 8)
    assert int(owner[centre_cell]) == 1 and int(cls_index[centre_cell]) == 5
    # and both come back from a perfect map
    det = decode(encode_targets_as_raw(boxes, labels, NUM_CLASSES, SIZE, CFG), CFG)
    assert len(det.boxes) == 2
    best = _match(det.boxes, det.labels, boxes, labels)
    assert (best > 0.95).all(), best


def test_tiny_box_between_cell_centres_is_found_but_loose():
    """Known limit of the (l, t, r, b) = exp(x) * stride parametrisation: a box smaller
    than the stride that holds no cell centre gets the nearest cell, whose distances
    cannot be negative, so the decoded box is the GT box stretched to that centre."""
    box = torch.tensor([[61.0, 61.0, 66.0, 66.0]])  # nearest cell centre (60, 60) lies outside
    label = torch.tensor([5])
    _, cls_index, _, pos, _ = _positives_per_box(box, label)
    assert int(pos.sum()) == 1 and int(cls_index[pos]) == 5
    det = decode(encode_targets_as_raw(box, label, NUM_CLASSES, SIZE, CFG), CFG)
    assert len(det.boxes) == 1 and int(det.labels[0]) == 5
    d = det.boxes[0]
    assert d[0] <= 61 and d[1] <= 61 and d[2] >= 66 - 1e-3 and d[3] >= 66 - 1e-3  # covers the box
    assert float(box_iou(det.boxes, box)) > 0.5  # a hit at IoU 0.5, loose above it


def _targets(boxes, labels, n=2):
    return [DetTarget(boxes.clone(), labels.clone(), input_size=SIZE, orig_size=SIZE) for _ in range(n)]


def _random_raw(seed: int, n: int = 2):
    """``n`` random raw maps of the test image's size (logits, log-distances, centre-ness)."""
    h, w = SIZE[0] // CFG.stride, SIZE[1] // CFG.stride
    return torch.randn(n, NUM_CLASSES + BOX_CHANNELS, h, w, generator=torch.Generator().manual_seed(seed))


def test_detection_loss_finite_positive_and_lowest_for_the_perfect_map():
    random_raw = _random_raw(0)
    targets = _targets(BOXES, LABELS)
    losses = detection_loss(random_raw, targets, CFG)
    assert set(losses) == {"focal", "giou", "centerness"}
    for k, v in losses.items():
        assert torch.isfinite(v) and float(v) > 0, (k, v)
    perfect = encode_targets_as_raw(BOXES, LABELS, NUM_CLASSES, SIZE, CFG)
    perfect_losses = detection_loss(torch.stack([perfect, perfect]), targets, CFG)
    assert sum(perfect_losses.values()) < sum(losses.values())
    assert float(perfect_losses["focal"]) < 0.01 * float(losses["focal"])
    assert float(perfect_losses["giou"]) < 1e-3  # boxes exact: GIoU loss ~0


def test_detection_loss_with_zero_boxes_is_finite_and_has_gradient():
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(2, NUM_CLASSES + BOX_CHANNELS, 16, 16, generator=g, requires_grad=True)
    empty = _targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    losses = detection_loss(raw, empty, CFG)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["focal"].detach()) > 0  # background everywhere is still supervised
    assert float(losses["giou"].detach()) == 0 and float(losses["centerness"].detach()) == 0
    sum(losses.values()).backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    # a mixed batch: one image with boxes, one without
    mixed = _targets(BOXES, LABELS, 1) + _targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 1)
    total = sum(detection_loss(raw.detach(), mixed, CFG).values())
    assert math.isfinite(float(total)) and float(total) > 0


@pytest.mark.parametrize("stride", [8, 16])
def test_round_trip_other_strides(stride):
    cfg = DetectionConfig(stride=stride)
    boxes = torch.tensor([[16.0, 16.0, 80.0, 96.0], [70.0, 20.0, 120.0, 60.0]])
    labels = torch.tensor([0, 9])
    det = decode(encode_targets_as_raw(boxes, labels, NUM_CLASSES, SIZE, cfg), cfg)
    assert len(det.boxes) == 2
    assert (_match(det.boxes, det.labels, boxes, labels) > 0.95).all()


def test_box_loss_weight_scales_the_giou_term_alone():
    raw, targets = _random_raw(2), _targets(BOXES, LABELS)
    plain = detection_loss(raw, targets, CFG)
    heavy = detection_loss(raw, targets, replace(CFG, box_loss_weight=2.5))
    assert torch.allclose(heavy["giou"], 2.5 * plain["giou"])
    assert torch.equal(heavy["focal"], plain["focal"]) and torch.equal(heavy["centerness"], plain["centerness"])


def test_quality_focal_loss_on_hard_targets_is_the_focal_loss_without_alpha():
    logits = torch.randn(50, NUM_CLASSES, generator=torch.Generator().manual_seed(3))
    hard = (torch.rand(50, NUM_CLASSES, generator=torch.Generator().manual_seed(4)) < 0.2).float()
    expected = sigmoid_focal_loss(logits, hard, alpha=-1, gamma=2.0, reduction="none")
    assert torch.allclose(quality_focal_loss(logits, hard, 2.0), expected, atol=1e-6)
    # a soft target: p = 0.5 against 0.8 costs BCE (log 2) times |0.8 - 0.5|^2
    soft = quality_focal_loss(torch.zeros(1), torch.tensor([0.8]), 2.0)
    assert torch.allclose(soft, torch.tensor([math.log(2) * 0.09]))


def test_quality_focal_targets_are_the_predicted_boxes_iou():
    """With ``quality_focal`` a positive's class target is its box's IoU: where the boxes are
    exact (IoU 1) the class term is the focal loss without alpha; boxes shrunk to a quarter of
    their area (IoU 0.25) make a confident class score expensive and a score of 0.25 cheap."""
    cfg = replace(CFG, quality_focal=True)
    perfect = encode_targets_as_raw(BOXES, LABELS, NUM_CLASSES, SIZE, CFG)[None]
    targets = _targets(BOXES, LABELS, 1)
    exact = detection_loss(perfect, targets, cfg)
    no_alpha = detection_loss(perfect, targets, replace(CFG, focal_alpha=-1))
    assert torch.allclose(exact["focal"], no_alpha["focal"], atol=1e-6)
    c = NUM_CLASSES
    halved = perfect.clone()
    halved[:, c:c + 4] -= math.log(2)  # every distance halved: a box of a quarter of the area
    _, _, pos = assign(BOXES, LABELS, grid_centers(SIZE[0] // 8, SIZE[1] // 8, 8), CFG)
    confident = detection_loss(halved, targets, cfg)["focal"]
    calibrated = halved.clone().flatten(2)
    calibrated[0, :c, pos] = torch.where(calibrated[0, :c, pos] > 0, math.log(0.25 / 0.75), calibrated[0, :c, pos])
    modest = detection_loss(calibrated.reshape(halved.shape), targets, cfg)["focal"]
    assert float(modest) < 0.05 * float(confident)
    # the plain focal loss rewards the confident score whatever the box
    hard_confident = detection_loss(halved, targets, CFG)["focal"]
    hard_modest = detection_loss(calibrated.reshape(halved.shape), targets, CFG)["focal"]
    assert float(hard_confident) < 0.05 * float(hard_modest)
