"""The embedded synthetic benchmark: deterministic, same formats as the real data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import load_split
from benchmarks.__main__ import main
from benchmarks.synthetic import COCO_IDS, COUNTS, generate

CLS_PER_CLASS = {split: max(n // 8, 2) for split, n in COUNTS.items()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("generated")
    return {"a": generate(base / "a", seed=0), "b": generate(base / "b", seed=0),
            "c": generate(base / "c", seed=1)}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _image_files(root: Path) -> list[str]:
    return [f for f in _files(root) if f.lower().endswith((".jpg", ".jpeg"))]


def test_synthetic_root_lives_in_the_session_cache(synthetic_root, onehead_cache):
    assert synthetic_root.is_relative_to(onehead_cache)
    assert (synthetic_root / "SYNTHETIC.txt").read_text().strip().endswith("seed 0")
    import benchmarks

    assert benchmarks.synthetic_root(0) == synthetic_root  # cached, not regenerated


def test_generate_refuses_an_existing_folder(tmp_path):
    with pytest.raises(FileExistsError):
        generate(tmp_path, seed=0)


def test_same_seed_gives_identical_files(generated):
    a, b = generated["a"], generated["b"]
    files = _files(a)
    assert files == _files(b)
    masks = [f for f in files if f.endswith(".png")]
    jsons = [f for f in files if f.endswith(".json")]
    assert len(masks) == sum(COUNTS.values())
    assert len(jsons) == 2
    for f in masks + jsons + [f for f in files if f.endswith(".txt")]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    images = _image_files(a)
    assert len(images) == 2 * sum(COUNTS.values()) + 10 * sum(CLS_PER_CLASS.values())
    for f in images:
        np.testing.assert_array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f)), err_msg=f)


def test_different_seeds_differ(generated):
    a, c = generated["a"], generated["c"]
    assert _files(a) == _files(c)  # same layout
    for name in ("mini_coco_det/annotations/COCO_train.json", "mini_voc_seg/train/SegmentationClass/syn_train_0000.png"):
        assert (a / name).read_bytes() != (c / name).read_bytes()
    same = sum(np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(c / f))) for f in _image_files(a))
    assert same == 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_loads_through_the_readers(synthetic_root, split):
    seg = load_split(synthetic_root, "seg", split)
    det = load_split(synthetic_root, "det", split)
    cls = load_split(synthetic_root, "cls", split)
    assert (len(seg.classes), len(det.classes), len(cls.classes)) == (21, 10, 10)
    assert (len(seg), len(det), len(cls)) == (COUNTS[split], COUNTS[split], 10 * CLS_PER_CLASS[split])
    assert det.category_ids == list(COCO_IDS)
    assert det.class_keys == [str(c) for c in COCO_IDS]
    assert cls.class_keys == cls.wnids == sorted(cls.wnids) and seg.class_keys == [str(i) for i in range(21)]
    _, raw = seg.load(0)
    values = set(np.unique(raw["mask"].numpy()).tolist())
    assert 255 in values and values - {0, 255} and values <= set(range(21)) | {255}
    labels = set()
    for i in range(len(det)):
        _, t = det[i]
        assert len(t.boxes) >= 1 and len(t.crowd_boxes) == 0
        labels |= set(t.labels.tolist())
    assert labels <= set(range(10)) and len(labels) >= 5
    assert [cls.samples[i][1] for i in range(0, len(cls), CLS_PER_CLASS[split])] == list(range(10))
    image, _ = cls.load(0)
    assert image.mode == "RGB" and image.size == (128, 128)


def test_cli_prints_json_summary(synthetic_root, capsys):
    assert main(["--data-root", str(synthetic_root)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = json.loads(captured.out)
    assert out["synthetic"] is True
    assert Path(out["data_root"]) == synthetic_root.resolve()
    tasks = out["tasks"]
    assert list(tasks) == ["seg", "det", "cls"]
    assert {t: tasks[t]["num_classes"] for t in tasks} == {"seg": 21, "det": 10, "cls": 10}
    for split, n in COUNTS.items():
        assert tasks["seg"]["splits"][split]["images"] == n
        assert tasks["det"]["splits"][split]["images"] == n
        assert tasks["cls"]["splits"][split]["images"] == 10 * CLS_PER_CLASS[split]
        doc = json.loads((synthetic_root / "mini_coco_det" / "annotations" / f"COCO_{split}.json").read_text())
        assert tasks["det"]["splits"][split]["boxes"] == len(doc["annotations"])
        assert tasks["det"]["splits"][split]["crowd_boxes"] == 0
    assert tasks["det"]["category_ids"] == list(COCO_IDS)
    assert len(tasks["seg"]["classes"]) == 21


def test_cli_task_subset_and_bad_task(synthetic_root, capsys):
    assert main(["--data-root", str(synthetic_root), "--tasks", "cls", "--quick"]) == 0
    assert list(json.loads(capsys.readouterr().out)["tasks"]) == ["cls"]
    assert main(["--data-root", str(synthetic_root), "--tasks", "seg,nope"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and "nope" in captured.err
