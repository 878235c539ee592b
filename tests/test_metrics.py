"""Task metrics cross-checked against torchmetrics, pycocotools and hand computation."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_jaccard_index

from avalanche_onehead.detection import DetectionConfig
from avalanche_onehead.tasks.cls import ClsEvaluator
from avalanche_onehead.tasks.det import DetEvaluator, DetTarget, DetTargets, ground_truth_dict
from avalanche_onehead.tasks.seg import SegEvaluator
from raw_maps import encode_targets_as_raw

# ---------------------------------------------------------------- segmentation

# 3 x 4 ground truth with two ignored pixels, classes 0, 1, 2
GT = torch.tensor([[0, 0, 1, 1],
                   [0, 255, 1, 2],
                   [2, 2, 255, 1]])
# predictions: class 3 only where the GT is ignored (must not count)
PRED = torch.tensor([[0, 1, 1, 1],
                     [0, 0, 2, 2],
                     [2, 1, 3, 1]])


def _iou_by_hand(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[int, float]:
    valid = gt != 255
    out = {}
    for c in range(num_classes):
        p, g = (pred == c) & valid, (gt == c) & valid
        union = (p | g).sum()
        if union:
            out[c] = (p & g).sum() / union
    return out


def test_seg_partial_case_matches_hand_computation_and_torchmetrics():
    e = SegEvaluator(21)
    e.update_masks(PRED[None], GT[None])
    res = e.compute()
    by_hand = _iou_by_hand(PRED.numpy(), GT.numpy(), 21)
    # written out: class 0: tp 2 / union 3; class 1: tp 3 / union 6; class 2: tp 2 / union 4
    assert by_hand == pytest.approx({0: 2 / 3, 1: 3 / 6, 2: 2 / 4})
    assert res["mIoU"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-6)
    tm = multiclass_jaccard_index(PRED[None], GT[None], num_classes=21, ignore_index=255, average="macro")
    assert res["mIoU"] == pytest.approx(float(tm), abs=1e-6)
    assert res["pixel_acc"] == pytest.approx(7 / 10)
    for c, v in by_hand.items():
        assert res[f"IoU/{c}"] == pytest.approx(v)
    assert "IoU/3" not in res  # predicted only on ignored pixels


def test_seg_perfect_prediction_gives_one():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 21, (2, 16, 16), generator=g)
    gt[:, :2] = 255
    pred = gt.clone()
    pred[gt == 255] = 7  # whatever is predicted on ignored pixels does not matter
    e = SegEvaluator(21)
    e.update_masks(pred, gt)
    res = e.compute()
    assert res["mIoU"] == pytest.approx(1.0)
    assert res["pixel_acc"] == pytest.approx(1.0)


def test_seg_absent_classes_are_not_counted():
    gt = torch.zeros(1, 8, 8, dtype=torch.long)
    gt[0, :4] = 1
    pred = gt.clone()
    pred[0, 0, :4] = 0  # 4 of 32 class-1 pixels predicted as background
    e = SegEvaluator(21)
    e.update_masks(pred, gt)
    res = e.compute()
    iou0, iou1 = 32 / 36, 28 / 32
    # the 19 classes absent from both are neither 1.0 (inflated) nor 0.0 (deflated)
    assert res["mIoU"] == pytest.approx((iou0 + iou1) / 2, abs=1e-6)
    assert set(k for k in res if k.startswith("IoU/")) == {"IoU/0", "IoU/1"}
    # a class predicted but absent from the GT does count, as 0
    pred2 = pred.clone()
    pred2[0, 7, 7] = 5
    e2 = SegEvaluator(21)
    e2.update_masks(pred2, gt)
    res2 = e2.compute()
    assert res2["IoU/5"] == 0.0
    assert res2["mIoU"] < res["mIoU"]


def test_seg_accumulates_one_dataset_level_confusion_matrix():
    g = torch.Generator().manual_seed(1)
    gts = [torch.randint(0, 3, (1, 6, 6), generator=g) for _ in range(3)]
    preds = [torch.randint(0, 3, (1, 6, 6), generator=g) for _ in range(3)]
    gts[0][0, 0] = 255
    e = SegEvaluator(21)
    for p, t in zip(preds, gts):
        e.update_masks(p, t)
    whole = _iou_by_hand(torch.cat(preds).numpy(), torch.cat(gts).numpy(), 21)
    assert e.compute()["mIoU"] == pytest.approx(np.mean(list(whole.values())), abs=1e-6)
    e.reset()
    e.update_masks(PRED[None], GT[None])
    assert e.compute()["mIoU"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3, abs=1e-6)


def test_seg_update_upsamples_raw_logits_to_the_mask():
    gt = torch.zeros(1, 16, 16, dtype=torch.long)
    gt[0, :, 8:] = 2
    raw = torch.zeros(1, 21, 4, 4)
    raw[0, 0, :, :2] = 5.0
    raw[0, 2, :, 2:] = 5.0
    e = SegEvaluator(21)
    e.update(raw, gt)
    assert e.compute()["mIoU"] == pytest.approx(1.0)


# ---------------------------------------------------------------- detection


def _coco_map(images, gts, preds) -> tuple[float, float]:
    """COCO mAP@[.5:.95] and mAP@.5 straight from pycocotools."""
    stats = _coco_stats(images, gts, preds)
    return stats[0], stats[1]


def _coco_stats(images, gts, preds) -> list[float]:
    """pycocotools' twelve summary numbers (mAP, mAP@.5, mAP@.75, mAP small / medium / large, ...).

    ``gts``/``preds``: per image dicts of xyxy ``boxes``, ``labels`` (+ ``iscrowd`` / ``scores``).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, dets, cats = [], [], set()
    for img_id, g in zip(images, gts):
        for k, (b, lab) in enumerate(zip(g["boxes"].tolist(), g["labels"].tolist())):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(lab),
                         "bbox": [b[0], b[1], w, h], "area": w * h,
                         "iscrowd": int(g.get("iscrowd", torch.zeros(len(g["labels"])))[k])})
            cats.add(int(lab))
    for img_id, p in zip(images, preds):
        for b, s, lab in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            dets.append({"image_id": img_id, "category_id": int(lab),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in images], "annotations": anns,
                  "categories": [{"id": c} for c in sorted(cats)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def _gt(boxes, labels, crowd=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.long)
    iscrowd = torch.tensor(crowd if crowd is not None else [0] * len(labels), dtype=torch.long)
    return {"boxes": boxes, "labels": labels, "iscrowd": iscrowd}


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.long)}


GTS = [
    _gt([[10, 10, 60, 80], [100, 40, 200, 120], [220, 150, 300, 230]], [0, 3, 3]),
    _gt([[5, 5, 100, 100], [150, 20, 170, 60], [0, 120, 320, 240]], [1, 0, 7], crowd=[0, 0, 1]),
]


def _det_eval(preds, gts=GTS):
    e = DetEvaluator(10)
    e.update_detections(preds, gts)
    return e.compute()


def test_det_perfect_predictions_give_one():
    preds = [_pred(g["boxes"][g["iscrowd"] == 0].tolist(), [0.9] * int((g["iscrowd"] == 0).sum()),
                   g["labels"][g["iscrowd"] == 0].tolist()) for g in GTS]
    res = _det_eval(preds)
    # the crowd box of image 2 has no detection and is not counted as a miss
    assert res["mAP"] == pytest.approx(1.0) and res["mAP50"] == pytest.approx(1.0)


def test_det_empty_predictions_give_zero():
    preds = [_pred([], [], []) for _ in GTS]
    res = _det_eval(preds)
    assert res["mAP"] == 0.0 and res["mAP50"] == 0.0


def test_det_partial_case_equals_pycocotools():
    preds = [
        _pred([[12, 11, 58, 82],      # class 0, IoU ~0.9
               [110, 45, 205, 125],   # class 3, IoU ~0.8
               [230, 160, 300, 230],  # class 3, IoU ~0.77
               [40, 40, 90, 90],      # class 3 false positive, high score
               [10, 10, 60, 80]],     # right box, wrong class (5)
              [0.9, 0.8, 0.4, 0.85, 0.7], [0, 3, 3, 3, 5]),
        _pred([[20, 20, 100, 100],    # class 1, IoU ~0.7
               [150, 30, 170, 60],    # class 0, IoU 0.75
               [10, 130, 300, 230],   # class 7 inside the crowd region: not a false positive
               [200, 200, 230, 230]], # class 7 false positive
              [0.6, 0.95, 0.9, 0.3], [1, 0, 7, 7]),
    ]
    res = _det_eval(preds)
    ref_map, ref_map50 = _coco_map([1, 2], GTS, preds)
    assert 0.0 < ref_map < 1.0
    assert res["mAP"] == pytest.approx(ref_map, abs=1e-6)
    assert res["mAP50"] == pytest.approx(ref_map50, abs=1e-6)


def test_det_map_by_object_size_matches_pycocotools():
    """mAP of small (< 32² px), medium and large boxes equals pycocotools' on a case with all
    three sizes, and a size without ground truth is left out."""
    gts = [_gt([[10, 10, 30, 30], [50, 50, 110, 110], [0, 120, 200, 240]], [0, 1, 2]),
           _gt([[5, 5, 25, 20], [150, 20, 210, 70]], [0, 1])]
    preds = [_pred([[11, 10, 30, 31], [52, 50, 110, 108], [0, 125, 190, 240], [60, 60, 100, 100]],
                   [0.9, 0.8, 0.7, 0.95], [0, 1, 2, 1]),
             _pred([[5, 6, 24, 20], [140, 20, 210, 75]], [0.4, 0.6], [0, 1])]
    res = _det_eval(preds, gts)
    stats = _coco_stats([1, 2], gts, preds)
    for k, size in enumerate(("small", "medium", "large")):
        assert stats[3 + k] >= 0
        assert res[f"mAP_{size}"] == pytest.approx(stats[3 + k], abs=1e-6), size
    assert 0 < res["mAP_medium"] < 1
    only_large = _det_eval([_pred([[0, 120, 200, 240]], [0.9], [2])], [_gt([[0, 120, 200, 240]], [2])])
    assert only_large["mAP_large"] == pytest.approx(1.0)
    assert "mAP_small" not in only_large and "mAP_medium" not in only_large


def test_det_crowd_box_is_neither_a_miss_nor_makes_its_detection_a_false_positive():
    gts = [_gt([[10, 10, 60, 60], [70, 70, 200, 200]], [2, 2], crowd=[0, 1])]
    only_normal = [_pred([[10, 10, 60, 60]], [0.5], [2])]
    assert _det_eval(only_normal, gts)["mAP"] == pytest.approx(1.0)
    # a higher-scored detection on the crowd region does not hurt
    with_crowd_hit = [_pred([[10, 10, 60, 60], [80, 80, 190, 190]], [0.5, 0.9], [2, 2])]
    assert _det_eval(with_crowd_hit, gts)["mAP"] == pytest.approx(1.0)
    assert _coco_map([1], gts, with_crowd_hit)[0] == pytest.approx(1.0)
    # the flag matters: without it the unmatched box is a miss
    not_flagged = [_gt([[10, 10, 60, 60], [70, 70, 200, 200]], [2, 2])]
    assert _det_eval(only_normal, not_flagged)["mAP"] < 0.6


def test_det_update_from_raw_maps_scores_in_original_pixels():
    cfg = DetectionConfig(stride=8)
    size, orig = (128, 128), (240, 320)
    boxes = [torch.tensor([[16.0, 20.0, 70.0, 90.0], [60.0, 60.0, 120.0, 110.0]]),
             torch.tensor([[30.0, 30.0, 100.0, 60.0]])]
    labels = [torch.tensor([2, 6]), torch.tensor([9])]
    raw = torch.stack([encode_targets_as_raw(b, lab, 10, size, cfg) for b, lab in zip(boxes, labels)])
    targets = DetTargets([DetTarget(b, lab, image_id=i, orig_size=orig, input_size=size)
                          for i, (b, lab) in enumerate(zip(boxes, labels))])
    e = DetEvaluator(10, cfg)
    e.update(raw, targets)
    res = e.compute()
    assert res["mAP"] > 0.95 and res["mAP50"] == pytest.approx(1.0)
    # the same maps scored against GT left in network-input pixels fail: the mapping matters
    wrong = DetTargets([DetTarget(b, lab, orig_size=size, input_size=size) for b, lab in zip(boxes, labels)])
    e2 = DetEvaluator(10, cfg)
    for r, t_ok, t_bad in zip(raw, targets.items, wrong.items):
        from avalanche_onehead.detection import decode_to_original

        d = decode_to_original(r, t_ok.orig_size, cfg)
        e2.update_detections([{"boxes": d.boxes, "scores": d.scores, "labels": d.labels}],
                             [ground_truth_dict(t_bad)])
    assert e2.compute()["mAP50"] < 0.5


def test_ground_truth_dict_maps_back_to_original_coordinates():
    t = DetTarget(
        boxes=torch.tensor([[16.0, 32.0, 64.0, 96.0]]), labels=torch.tensor([4]),
        crowd_boxes=torch.tensor([[0.0, 0.0, 128.0, 64.0]]), crowd_labels=torch.tensor([1]),
        image_id=7, orig_size=(240, 320), input_size=(128, 128),
    )
    g = ground_truth_dict(t)
    sx, sy = 320 / 128, 240 / 128
    assert torch.allclose(g["boxes"], torch.tensor([[16 * sx, 32 * sy, 64 * sx, 96 * sy],
                                                    [0.0, 0.0, 320.0, 64 * sy]]))
    assert g["labels"].tolist() == [4, 1]
    assert g["iscrowd"].tolist() == [0, 1]
    assert g["boxes"].dtype == torch.float32 and g["labels"].dtype == torch.long
    empty = ground_truth_dict(DetTarget(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                        orig_size=(240, 320), input_size=(128, 128)))
    assert empty["boxes"].shape == (0, 4) and empty["iscrowd"].numel() == 0


# ---------------------------------------------------------------- classification


def test_cls_top1_on_known_logits():
    logits = torch.tensor([
        [5.0, 1.0, 0.0, 0, 0, 0, 0, 0, 0, 0],   # argmax 0
        [0.0, 0.0, 3.0, 0, 0, 0, 0, 0, 0, 0],   # argmax 2
        [0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 9.0],  # argmax 9
        [0.0, 4.0, 0.0, 0, 0, 0, 0, 0, 0, 0],   # argmax 1
        [0.0, 0.0, 0.0, 0, 0, 0, 2.0, 0, 0, 0],  # argmax 6
    ])
    labels = torch.tensor([0, 2, 3, 1, 5])  # 3 of 5 right
    e = ClsEvaluator(10)
    e.update(logits[:2], labels[:2])
    e.update(logits[2:], labels[2:])
    res = e.compute()
    assert res["Top-1"] == pytest.approx(3 / 5)
    assert res["Top-1"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert res["Acc/0"] == 1.0 and res["Acc/3"] == 0.0 and res["Acc/5"] == 0.0
    # probabilities (what predict returns) rank the same
    e.reset()
    e.update(logits.softmax(-1), labels)
    assert e.compute()["Top-1"] == pytest.approx(3 / 5)


def test_cls_empty_and_perfect():
    e = ClsEvaluator(10)
    assert e.compute() == {"Top-1": 0.0}
    labels = torch.arange(10)
    e.update(torch.eye(10) * 3, labels)
    assert e.compute()["Top-1"] == 1.0
