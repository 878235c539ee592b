"""Randomly corrupted copies of a COCO JSON, masks and images through the dataset check.

Seeded, so every failure replays.  The only acceptable outcomes of
``python -m benchmarks`` are a clean load (exit 0, a JSON report) or a clean error
(exit 2, one ``error:`` line naming a file of the data root); any traceback fails.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.__main__ import main

FOLDERS = {"det": "mini_coco_det", "seg": "mini_voc_seg", "cls": "imagenette_160"}
ODD_VALUES = [None, "x", "", -1, 0, 2**40, 3.5, float("nan"), float("inf"), -float("inf"), True, [], {}, [1, 2, 3],
              [1, 2, 3, 4, 5], ["1", "2", "3", "4"], {"id": 1}, "NaN", [float("nan")] * 4, [-5, -5, 1e9, 1e9]]


def corrupt_bytes(data: bytes, rng: random.Random) -> bytes:
    """Truncate, flip bytes, splice junk or zero a range: what damaged files look like."""
    buf = bytearray(data)
    how = rng.choice(["truncate", "flip", "splice", "zero", "header"])
    if how == "truncate":
        return bytes(buf[: rng.randrange(0, len(buf))])
    if how == "flip":
        for _ in range(rng.randint(1, 20)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif how == "splice":
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif how == "zero":
        at = rng.randrange(len(buf))
        buf[at:at + rng.randint(1, 256)] = b"\0" * len(buf[at:at + 256])
    else:  # damage the first bytes, where the format and the size are
        for i in range(rng.randint(1, 24)):
            buf[rng.randrange(min(len(buf), 32))] = rng.randrange(256)
    return bytes(buf)


def corrupt_coco(doc: dict, rng: random.Random) -> dict:
    """Delete, retype or duplicate entries anywhere in the document, 1 to 3 times."""
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(["images", "annotations", "categories", "top"])
        if section == "top":
            key = rng.choice(["images", "annotations", "categories"])
            if rng.random() < 0.5:
                doc.pop(key, None)
            else:
                doc[key] = rng.choice(ODD_VALUES)
            continue
        items = doc.get(section)
        if not isinstance(items, list) or not items:
            continue
        k = rng.randrange(len(items))
        if rng.random() < 0.2:
            items.append(json.loads(json.dumps(items[k])))  # a duplicate, ids and all
            continue
        item = items[k]
        if not isinstance(item, dict) or not item:
            items[k] = rng.choice(ODD_VALUES)
            continue
        key = rng.choice(sorted(item))
        if rng.random() < 0.3:
            del item[key]
        else:
            item[key] = rng.choice(ODD_VALUES)
    return doc


def corrupt_mask(path: Path, rng: random.Random) -> None:
    how = rng.choice(["bytes", "values", "size", "mode", "bytes"])
    if how == "bytes":
        path.write_bytes(corrupt_bytes(path.read_bytes(), rng))
        return
    with Image.open(path) as m:
        pal, arr = m.getpalette(), np.array(m)
    if how == "values":
        arr[rng.randrange(arr.shape[0]), :] = rng.choice([0, 7, 20, 21, 100, 254, 255])
    elif how == "size":
        arr = arr[: rng.randint(1, arr.shape[0]), : rng.randint(1, arr.shape[1])]
    out = Image.fromarray(arr, mode="P")
    out.putpalette(pal)
    if how == "mode":
        mode = rng.choice(["RGB", "LA", "I;16", "1", "L"])
        out = Image.fromarray(arr.astype(np.uint16)) if mode == "I;16" else out.convert(mode)
    out.save(path)


def corrupt_image(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.8:
        path.write_bytes(corrupt_bytes(path.read_bytes(), rng))
        return
    with Image.open(path) as im:  # a valid image in an odd format under the same name
        mode = rng.choice(["L", "CMYK", "I;16", "1", "P", "RGBA"])
        im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257) if mode == "I;16" else im.convert(mode)
        buf = io.BytesIO()
        im.save(buf, format="PNG" if im.mode not in ("CMYK",) else "JPEG")
    path.write_bytes(buf.getvalue())


def _one_case(seed: int, synthetic_root: Path, tmp_path: Path) -> tuple[str, Path]:
    rng = random.Random(seed)
    task = ["det", "det", "seg", "cls"][seed % 4] if seed % 3 else rng.choice(["det", "seg"])
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / FOLDERS[task], root / FOLDERS[task])
    base = root / FOLDERS[task]
    if task == "det" and rng.random() < 0.7:
        target = base / "annotations" / rng.choice(["COCO_train.json", "COCO_val.json"])
        if rng.random() < 0.75:
            target.write_text(json.dumps(corrupt_coco(json.loads(target.read_text()), rng)))
        else:
            target.write_bytes(corrupt_bytes(target.read_bytes(), rng))
    elif task == "seg" and rng.random() < 0.6:
        target = rng.choice(sorted(base.rglob("*.png")))
        corrupt_mask(target, rng)
    else:
        target = rng.choice(sorted(p for p in base.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")))
        corrupt_image(target, rng)
    return task, root


@pytest.mark.parametrize("seed", range(40))
def test_corrupted_data_loads_cleanly_or_fails_cleanly(seed, synthetic_root, tmp_path, capsys):
    task, root = _one_case(seed, synthetic_root, tmp_path)
    code = main(["--data-root", str(root), "--tasks", task])
    out = capsys.readouterr()
    if code == 0:
        report = json.loads(out.out)
        assert task in report["tasks"]
        return
    lines = out.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {root}"), out.err
    assert out.out == ""
