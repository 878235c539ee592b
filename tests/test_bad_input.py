"""Broken data roots: every problem is one DatasetError, one line, naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from benchmarks import DatasetError, JointTransform, load_split
from benchmarks.__main__ import main
from benchmarks.check import check_data

# Each case breaks a fresh copy of the synthetic benchmark and returns
# (the path the error must name, a call that must raise the error).
Case = Callable[[Path], tuple[Path, Callable[[], object]]]

DET = "mini_coco_det"
SEG = "mini_voc_seg"
CLS = "imagenette_160"


def _edit_json(root: Path, edit) -> Path:
    path = root / DET / "annotations" / "COCO_train.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def _seg_mask(root: Path, k: int = 5) -> Path:
    return root / SEG / "train" / "SegmentationClass" / f"syn_train_{k:04d}.png"


def _validate(root: Path, task: str) -> Callable[[], object]:
    return lambda: load_split(root, task, "train").validate()


def missing_root(root):
    gone = root.parent / "no-such-root"
    return gone, lambda: load_split(gone, "seg", "train")


def missing_task_folder(root):
    shutil.rmtree(root / DET)
    return root / DET, lambda: load_split(root, "det", "train")


def no_annotation_json(root):
    (root / DET / "annotations" / "COCO_train.json").unlink()
    return root / DET / "train", lambda: load_split(root, "det", "train")


def several_annotation_jsons(root):
    ann = root / DET / "annotations"
    shutil.copy(ann / "COCO_train.json", ann / "COCO_train_old.json")
    return root / DET / "train", lambda: load_split(root, "det", "train")


def image_file_missing(root):
    img = root / DET / "train" / "000000000005.jpg"
    img.unlink()
    return img, lambda: load_split(root, "det", "train")


def unknown_category_id(root):
    def edit(doc):
        doc["annotations"][3]["category_id"] = 2  # not among 1, 14, 39, ...
    return _edit_json(root, edit), lambda: load_split(root, "det", "train")


def unknown_image_id(root):
    def edit(doc):
        doc["annotations"][3]["image_id"] = 987654
    return _edit_json(root, edit), lambda: load_split(root, "det", "train")


def rgb_mask(root):
    mask = _seg_mask(root)
    with Image.open(mask) as m:
        m.convert("RGB").save(mask)
    return mask, _validate(root, "seg")


def mask_size_mismatch(root):
    mask = _seg_mask(root)
    with Image.open(mask) as m:
        m.resize((64, 64), Image.NEAREST).save(mask)
    return mask, _validate(root, "seg")


def mask_value_out_of_range(root):
    mask = _seg_mask(root)
    with Image.open(mask) as m:
        pal = m.getpalette()
        arr = np.array(m)
    arr[10:12, 10:12] = 50
    bad = Image.fromarray(arr, mode="P")
    bad.putpalette(pal)
    bad.save(mask)
    return mask, _validate(root, "seg")


def corrupt_det_image(root):
    img = root / DET / "train" / "000000000005.jpg"
    img.write_bytes(b"this is not a JPEG file at all" * 10)

    def trigger():
        ds = load_split(root, "det", "train", JointTransform(64))
        idx = next(i for i, s in enumerate(ds.samples) if s[1].name == img.name)
        return ds[idx]
    return img, trigger


def truncated_seg_image(root):
    img = root / SEG / "train" / "JPEGImages" / "syn_train_0007.jpg"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    return img, _validate(root, "seg")


def empty_class_folder(root):
    folder = root / CLS / "train" / "n90000003"
    for f in folder.iterdir():
        f.unlink()
    return folder, lambda: load_split(root, "cls", "train")


def _det_json(root: Path) -> Path:
    return root / DET / "annotations" / "COCO_train.json"


def _json_case(edit):
    """A case that edits the training COCO JSON; the error must name the JSON file."""
    def case(root):
        return _edit_json(root, edit), lambda: load_split(root, "det", "train")
    case.__name__ = edit.__name__
    return case


def coco_top_level_list(root):
    path = _det_json(root)
    path.write_text(json.dumps([{"id": 1}]))
    return path, lambda: load_split(root, "det", "train")


@_json_case
def annotation_without_bbox(doc):
    del doc["annotations"][2]["bbox"]


@_json_case
def image_without_file_name(doc):
    del doc["images"][1]["file_name"]


@_json_case
def category_without_id(doc):
    del doc["categories"][4]["id"]


@_json_case
def bbox_of_three_numbers(doc):
    doc["annotations"][0]["bbox"] = [1, 2, 3]


@_json_case
def bbox_as_a_string(doc):
    doc["annotations"][0]["bbox"] = "10 10 20 20"


@_json_case
def duplicate_image_ids(doc):
    doc["images"][1]["id"] = doc["images"][0]["id"]


@_json_case
def duplicate_annotation_ids(doc):
    doc["annotations"][1]["id"] = doc["annotations"][0]["id"]


@_json_case
def category_id_as_a_list(doc):
    doc["annotations"][0]["category_id"] = [1]


def image_size_differs_from_the_json(root):
    """Boxes are in the JSON's pixels: an image of another size would misplace them."""
    def edit(doc):
        doc["images"][0]["width"] += 7
    path = _edit_json(root, edit)
    img = root / DET / "train" / json.loads(path.read_text())["images"][0]["file_name"]
    return img, lambda: check_data(root, ["det"])


def huge_png(root):
    """A PNG header announcing 15000 x 15000 pixels: refused before any decoding."""
    img = root / CLS / "train" / "n90000002" / "huge.png"
    img.write_bytes(png_header(15000, 15000))
    return img, lambda: check_data(root, ["cls"])


def unreadable_class_folder(root, monkeypatch):
    """Tests run as root, for whom a chmod 000 folder stays readable: the refusal is simulated."""
    folder = root / CLS / "train" / "n90000004"
    real = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    return folder, lambda: load_split(root, "cls", "train")


unreadable_class_folder.patches = True


def _apply(case, root, monkeypatch):
    return case(root, monkeypatch) if getattr(case, "patches", False) else case(root)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit grayscale): enough for Pillow to read the size."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


CASES: list[Case] = [
    missing_root, missing_task_folder, no_annotation_json, several_annotation_jsons,
    image_file_missing, unknown_category_id, unknown_image_id, rgb_mask, mask_size_mismatch,
    mask_value_out_of_range, corrupt_det_image, truncated_seg_image, empty_class_folder,
    coco_top_level_list, annotation_without_bbox, image_without_file_name, category_without_id,
    bbox_of_three_numbers, bbox_as_a_string, duplicate_image_ids, duplicate_annotation_ids,
    category_id_as_a_list, image_size_differs_from_the_json, huge_png, unreadable_class_folder,
]


@pytest.fixture
def data_copy(synthetic_root, tmp_path) -> Path:
    root = tmp_path.resolve() / "data"
    shutil.copytree(synthetic_root, root)
    return root


def test_the_untouched_copy_is_fine(data_copy):
    for task in ("seg", "det", "cls"):
        load_split(data_copy, task, "train").validate()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_raises_one_line_dataset_error(case, data_copy, monkeypatch):
    path, trigger = _apply(case, data_copy, monkeypatch)
    with pytest.raises(DatasetError) as info:
        trigger()
    err = info.value
    msg = str(err)
    assert len(msg.splitlines()) == 1 and "\n" not in msg and "\r" not in msg, msg
    assert err.path == str(path)
    assert msg.startswith(f"{path}: ") and len(msg) > len(f"{path}: ") + 5
    if case is several_annotation_jsons:
        assert "COCO_train.json" in msg and "COCO_train_old.json" in msg
    if case in (unknown_category_id, unknown_image_id):
        assert "annotation 4 " in msg  # the 4th annotation of the file has id 4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_cli_reports_one_error_line(case, data_copy, capsys, monkeypatch):
    path, _ = _apply(case, data_copy, monkeypatch)
    root = path if case is missing_root else data_copy
    code = main(["--data-root", str(root)])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0]
