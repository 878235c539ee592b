"""experiments/box_fit.py: the detection output's fit at each box's centre cell (IoU, width and
height over the truth, probability of the true class), by COCO size."""
from __future__ import annotations

import json
import math

import pytest
import torch

import avalanche_onehead.commands.box_fit
from avalanche_onehead import commands
from avalanche_onehead.box_fit import size_of, summarize_fit
from avalanche_onehead.detection import DetectionConfig, centre_cell_fit


def raw_predicting(boxes_ltrb: dict[int, tuple[float, float, float, float]], labels: dict[int, int],
                   h: int = 16, w: int = 16, num_classes: int = 3) -> torch.Tensor:
    """A raw map whose cell i predicts the given pixel distances and logit 2 for its class."""
    raw = torch.full((num_classes + 5, h, w), -5.0)
    flat = raw.view(num_classes + 5, -1)
    for cell, ltrb in boxes_ltrb.items():
        flat[num_classes:num_classes + 4, cell] = torch.log(torch.tensor(ltrb) / 8)
        flat[labels[cell], cell] = 2.0
    return raw


def test_centre_cell_fit_measures_the_box_predicted_at_the_centre_cell():
    cfg = DetectionConfig(stride=8)
    # box 0: 32 x 16 px centred at (36, 20) -> cell (row 2, col 4), whose centre is (36, 20)
    # box 1: 16 x 16 px centred at (100, 100) -> cell (12, 12) at (100, 100); predicted twice as wide
    boxes = torch.tensor([[20.0, 12.0, 52.0, 28.0], [92.0, 92.0, 108.0, 108.0]])
    labels = torch.tensor([1, 2])
    raw = raw_predicting({2 * 16 + 4: (16, 8, 16, 8), 12 * 16 + 12: (16, 8, 16, 8)}, {2 * 16 + 4: 1, 12 * 16 + 12: 0})
    fit = centre_cell_fit(raw, boxes, labels, cfg)
    torch.testing.assert_close(fit["iou"], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(fit["width_ratio"], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(fit["height_ratio"], torch.tensor([1.0, 1.0]))
    # the true class of box 1 (2) got logit -5, not the 2 its cell gave class 0
    torch.testing.assert_close(fit["class_probability"], torch.sigmoid(torch.tensor([2.0, -5.0])))


def test_centre_cell_fit_of_an_image_without_boxes_is_empty():
    fit = centre_cell_fit(torch.zeros(8, 4, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), DetectionConfig())
    assert all(v.numel() == 0 for v in fit.values())


def test_sizes_follow_cocos_area_bounds():
    areas = torch.tensor([31.0 ** 2, 32.0 ** 2, 95.0 ** 2, 96.0 ** 2])
    assert size_of(areas).tolist() == [0, 1, 1, 2]


def test_summary_gives_medians_per_size_and_leaves_empty_sizes_out():
    fits = {"iou": torch.tensor([0.2, 0.6, 0.8]), "width_ratio": torch.tensor([2.0, 1.0, 1.5]),
            "height_ratio": torch.tensor([1.0, 1.0, 1.0]), "class_probability": torch.tensor([0.1, 0.3, 0.5])}
    out = summarize_fit(fits, torch.tensor([2, 2, 2]))
    assert list(out) == ["large"]
    assert out["large"] == {"boxes": 3, "median_iou": 0.6, "share_iou_at_least_0.5": round(2 / 3, 3),
                            "median_width_ratio": 1.5, "median_height_ratio": 1.0, "median_class_probability": 0.3}


def test_box_fit_cli_on_the_synthetic_benchmark(tmp_path, synthetic_root, capsys):
    from avalanche_onehead.checkpoint import save_checkpoint
    from avalanche_onehead.model import create_model

    torch.manual_seed(0)
    model = create_model(pretrained=False)
    names = {t: [f"{t}{i}" for i in range(n)] for t, n in model.cfg.num_classes.items()}
    weights = save_checkpoint(tmp_path / "m.pt", model, classes=names, image_size=64)
    assert commands.box_fit.main(["--weights", str(weights), "--data-root", str(synthetic_root),
                                  "--max-images", "6", "--split", "val"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "val" and r["images"] == 6 and r["by_size"]
    for size in r["by_size"].values():
        assert size["boxes"] > 0 and 0.0 <= size["median_iou"] <= 1.0
        assert math.isfinite(size["median_width_ratio"]) and 0.0 < size["median_class_probability"] < 1.0


@pytest.mark.parametrize("argv, message", [
    (["--weights", "missing.pt"], "checkpoint file not found"),
    (["--weights", "model.onnx"], "ONNX export"),
    (["--weights", "m.pt", "--split", "dev"], "--split"),
    (["--weights", "m.pt", "--max-images", "0"], "--max-images"),
])
def test_box_fit_cli_refuses_bad_input_in_one_line(tmp_path, monkeypatch, refused, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in refused(commands.box_fit.main, argv)
