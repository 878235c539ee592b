"""experiments/predict.py: a picture, a JSON and a mask per image, from a .pt or an .onnx."""
from __future__ import annotations

import avalanche_onehead.commands.predict
from avalanche_onehead import commands

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avalanche_onehead.checkpoint import save_checkpoint
from avalanche_onehead.model import create_model
from avalanche_onehead.predict import collect_images, output_names, predict_files

SIZE = 64
CLASSES = {"seg": [f"s{i}" for i in range(21)], "det": [f"d{i}" for i in range(10)],
           "cls": [f"c{i}" for i in range(10)]}
IDS = [1, 14, 39, 42, 52, 65, 67, 73, 74, 88]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(pretrained=False)
    path = tmp_path_factory.mktemp("predict") / "tiny.pt"
    return save_checkpoint(path, model, classes=CLASSES,
                           class_keys={"det": [str(i) for i in IDS]}, image_size=SIZE)


@pytest.fixture()
def images(tmp_path) -> Path:
    """A folder with a colour JPEG and a grayscale PNG of other sizes, and a non-image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (80, 50), dtype=np.uint8), mode="L").save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def check_outputs(out: Path, name: str, size: tuple[int, int]) -> dict:
    record = json.loads((out / f"{name}.json").read_text())
    h, w = size
    assert (record["height"], record["width"]) == (h, w)
    for d in record["detections"]:
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # original pixels
        assert d["label"] in CLASSES["det"] and d["category_id"] == IDS[d["class_index"]] and 0 <= d["score"] <= 1
    probs = record["classification"]["probabilities"]
    assert set(probs) == set(CLASSES["cls"]) and sum(probs.values()) == pytest.approx(1, abs=1e-3)
    top3 = record["classification"]["top3"]
    assert len(top3) == 3 and top3[0]["probability"] == max(probs.values())
    seg = record["segmentation"]
    assert seg["mask"] == f"{name}_mask.png"
    mask = Image.open(out / seg["mask"])
    assert mask.mode == "P" and mask.size == (w, h)
    present = {CLASSES["seg"][i] for i in np.unique(np.array(mask))}
    assert set(seg["classes_present"]) == present
    assert sum(seg["classes_present"].values()) == pytest.approx(1, abs=1e-3)
    picture = Image.open(out / f"{name}.png")
    assert picture.size[0] > 300  # a real figure, not an empty file
    return record


def test_predict_writes_picture_json_and_mask_per_image(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "preds"
    assert commands.predict.main(
        ["--weights", str(checkpoint), "--out", str(out), str(images / "a.jpg"), str(images)]) == 0
    stdout = capsys.readouterr().out
    assert "written: 2 image(s)" in stdout  # a.jpg named twice is predicted once
    check_outputs(out, "a", (72, 96))
    record = check_outputs(out, "b", (80, 50))
    assert record["runtime"] == "pytorch" and record["image"] == str(images / "b.png")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "a_mask.png", "b.json", "b.png", "b_mask.png"]


def test_the_json_layout_and_the_printed_line_are_pinned(checkpoint, images, tmp_path, capsys):
    """The format users parse: key names and order of the record and of its sections, and the
    command's line per image."""
    out = tmp_path / "preds"
    assert commands.predict.main(["--weights", str(checkpoint), "--out", str(out), str(images / "a.jpg")]) == 0
    text = (out / "a.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2) + "\n"
    assert list(record) == ["image", "weights", "runtime", "height", "width", "detections", "classification",
                            "segmentation"]
    assert list(record["classification"]) == ["top3", "probabilities"]
    assert [list(t) for t in record["classification"]["top3"]] == [["label", "probability"]] * 3
    probs = list(record["classification"]["probabilities"].values())
    assert probs == sorted(probs, reverse=True)  # most probable first
    assert list(record["segmentation"]) == ["mask", "classes_present"]
    shares = list(record["segmentation"]["classes_present"].values())
    assert shares == sorted(shares, reverse=True)  # largest first
    assert record["detections"]  # the untrained head keeps boxes, so their keys are checked
    for d in record["detections"]:
        assert list(d) == ["label", "class_index", "score", "box_xyxy", "category_id"]
    top = record["classification"]["top3"][0]
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{images / 'a.jpg'}: {len(record['detections'])} boxes, top class {top['label']} "
        f"({top['probability']:.2f}) -> a.png, a.json, a_mask.png")


def test_a_task_without_the_output_hook_is_left_out(checkpoint, images, tmp_path, monkeypatch, capsys):
    """Without detection's ``predict_output``: no "detections" section, no box count, the
    picture keeps one panel (segmentation), the other tasks' parts stay as they are."""
    from dataclasses import replace

    from avalanche_onehead.tasks import TASKS

    full = predict_files(checkpoint, [images / "a.jpg"], tmp_path / "full")[0]
    monkeypatch.setitem(TASKS, "det", replace(TASKS["det"], predict_output=None))
    out = tmp_path / "preds"
    assert commands.predict.main(["--weights", str(checkpoint), "--out", str(out), str(images / "a.jpg")]) == 0
    record = json.loads((out / "a.json").read_text())
    assert "detections" not in record and "boxes" not in capsys.readouterr().out
    assert {k: v for k, v in record.items() if k != "weights"} == {
        k: v for k, v in full.items() if k not in ("weights", "detections", "written")}
    one_panel, two_panels = Image.open(out / "a.png"), Image.open(tmp_path / "full" / "a.png")
    assert one_panel.size[1] == two_panels.size[1] and one_panel.size[0] == two_panels.size[0] // 2


def test_predict_mask_matches_the_model_prediction(checkpoint, images, tmp_path):
    from avalanche_onehead.onnx_runtime import load_model
    from benchmarks import JointTransform

    records = predict_files(checkpoint, [images / "a.jpg"], tmp_path)
    model, meta = load_model(checkpoint)
    image = Image.open(images / "a.jpg").convert("RGB")
    x, _ = JointTransform(SIZE, mean=model.mean, std=model.std)(image, {})
    pred = model.predict(x[None], [(72, 96)])[0]
    assert np.array_equal(np.array(Image.open(tmp_path / "a_mask.png")), pred["seg"].numpy())
    assert len(records[0]["detections"]) == len(pred["det"].scores)


def test_same_names_from_two_folders_do_not_overwrite(tmp_path):
    paths = [tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg", tmp_path / "b.jpg"]
    assert output_names(paths) == ["a", "y_a", "b"]


@pytest.mark.parametrize("case", ["missing", "not an image", "empty folder", "corrupt"])
def test_bad_input_is_one_error_line_and_nothing_written(case, checkpoint, images, tmp_path, capsys):
    bad = {"missing": tmp_path / "nope.jpg", "not an image": images / "notes.txt",
           "empty folder": tmp_path / "empty", "corrupt": images / "broken.jpg"}[case]
    if case == "empty folder":
        bad.mkdir()
    if case == "corrupt":
        bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "preds"
    with pytest.raises(SystemExit) as info:
        commands.predict.main(["--weights", str(checkpoint), "--out", str(out),
                                                    str(images / "a.jpg"), str(bad)])
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(bad) in err[0], captured.err
    assert not out.exists()


def test_collect_images_keeps_order_and_skips_non_images(images):
    assert [p.name for p in collect_images([images])] == ["a.jpg", "b.png"]
