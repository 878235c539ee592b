"""The embedded synthetic benchmark, written in the SAME on-disk formats as the real data.

Coloured geometric shapes on textured backgrounds: VOC palette PNG masks (21
classes incl. background, 255 borders), a COCO JSON + JPEGs (10 categories with
non-contiguous ids, like the real mini-COCO), and class folders (10 classes).
Generation is deterministic by seed, takes seconds, and happens once under a
cache folder; the regular readers load it.  Each task names its writer here in its
spec (``TaskSpec.synthetic_writer``).
"""
from __future__ import annotations

import json
import os
import pkgutil
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from avalanche_onehead.tasks import TASKS
from avalanche_onehead.tasks.seg import voc_palette

VERSION = 1
SHAPES = ("ellipse", "rectangle", "triangle", "diamond")
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 40), (220, 60, 220))
# the real mini-COCO's category ids, so id mapping is exercised the same way
COCO_IDS = (1, 14, 39, 42, 52, 65, 67, 73, 74, 88)
CLS_WNIDS = tuple(f"n{90000000 + i:08d}" for i in range(10))
SIZE = 128
COUNTS = {"train": 32, "val": 16}


def default_cache_dir() -> Path:
    base = os.environ.get("ONEHEAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "avalanche_onehead")
    return Path(base)


def _background(rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((SIZE, SIZE), Image.BICUBIC)
    fine = rng.normal(0, 12, (SIZE, SIZE, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) * 0.5 + 60 + fine, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.SMOOTH)


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, fill, outline=None, width=0) -> None:
    poly = _polygon(shape, box)
    if poly is not None:
        draw.polygon(poly, fill=fill, outline=outline, width=width)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    else:
        draw.rectangle(box, fill=fill, outline=outline, width=width)


def _random_box(rng, lo: int, hi: int) -> tuple[float, float, float, float]:
    w, h = rng.integers(lo, hi, 2)
    x0 = rng.integers(0, SIZE - w)
    y0 = rng.integers(0, SIZE - h)
    return float(x0), float(y0), float(x0 + w), float(y0 + h)


def _seg_class(shape_i: int, colour_i: int) -> int:
    return 1 + shape_i * len(COLOURS) + colour_i  # 1..20


def write_seg(root: Path, rng: np.random.Generator) -> None:
    pal = voc_palette()
    base = root / "mini_voc_seg"
    for split, n in COUNTS.items():
        (base / split / "JPEGImages").mkdir(parents=True)
        (base / split / "SegmentationClass").mkdir(parents=True)
        for k in range(n):
            img = _background(rng)
            mask = Image.new("P", (SIZE, SIZE), 0)
            mask.putpalette(pal)
            d_img, d_mask = ImageDraw.Draw(img), ImageDraw.Draw(mask)
            for _ in range(rng.integers(1, 4)):
                s, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
                box = _random_box(rng, 28, 64)
                _draw(d_img, SHAPES[s], box, COLOURS[c])
                _draw(d_mask, SHAPES[s], box, _seg_class(s, c), outline=255, width=2)
            name = f"syn_{split}_{k:04d}"
            img.save(base / split / "JPEGImages" / f"{name}.jpg", quality=92)
            mask.save(base / split / "SegmentationClass" / f"{name}.png")
    names = ["background"] + [f"{SHAPES[i // len(COLOURS)]}-{i % len(COLOURS)}" for i in range(20)]
    (base / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)) + "255 void\n")


def write_det(root: Path, rng: np.random.Generator) -> None:
    base = root / "mini_coco_det"
    (base / "annotations").mkdir(parents=True)
    det_classes = [(s, c) for s in range(len(SHAPES)) for c in range(3)][:10]
    cats = [{"id": cid, "name": f"{SHAPES[s]}-{c}", "supercategory": "shape"}
            for cid, (s, c) in zip(COCO_IDS, det_classes)]
    ann_id, img_id = 1, 1
    for split, n in COUNTS.items():
        (base / split).mkdir(parents=True)
        images, anns = [], []
        for k in range(n):
            img = _background(rng)
            draw = ImageDraw.Draw(img)
            for _ in range(rng.integers(1, 4)):
                ci = int(rng.integers(len(det_classes)))
                s, c = det_classes[ci]
                box = _random_box(rng, 16, 56)
                _draw(draw, SHAPES[s], box, COLOURS[c])
                x0, y0, x1, y1 = box
                anns.append({"id": ann_id, "image_id": img_id, "category_id": COCO_IDS[ci],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                             "iscrowd": 0, "segmentation": []})
                ann_id += 1
            name = f"{img_id:012d}.jpg"
            img.save(base / split / name, quality=92)
            images.append({"id": img_id, "file_name": name, "width": SIZE, "height": SIZE})
            img_id += 1
        doc = {"info": {"description": "avalanche-onehead synthetic"}, "licenses": [],
               "images": images, "annotations": anns, "categories": cats}
        (base / "annotations" / f"COCO_{split}.json").write_text(json.dumps(doc))


def write_cls(root: Path, rng: np.random.Generator) -> None:
    base = root / "imagenette_160"
    for split, n in COUNTS.items():
        for label, wnid in enumerate(CLS_WNIDS):
            d = base / split / wnid
            d.mkdir(parents=True)
            for k in range(max(n // 8, 2)):
                img = _background(rng)
                draw = ImageDraw.Draw(img)
                colour = COLOURS[label % len(COLOURS)]
                if label < 5:  # horizontal stripes
                    for y in range(int(rng.integers(0, 8)), SIZE, 16):
                        draw.rectangle((0, y, SIZE, y + 6), fill=colour)
                else:  # vertical stripes
                    for x in range(int(rng.integers(0, 8)), SIZE, 16):
                        draw.rectangle((x, 0, x + 6, SIZE), fill=colour)
                img.save(d / f"{wnid}_{k}.JPEG", quality=92)
    (base / "classes.txt").write_text("".join(f"{w} stripes-{i}\n" for i, w in enumerate(CLS_WNIDS)))


def generate(dest: Path, seed: int = 0) -> Path:
    """Write the benchmark into ``dest`` (which must not exist yet): every task's part, by
    label, from one random generator."""
    rng = np.random.default_rng(seed)
    dest = Path(dest)
    dest.mkdir(parents=True)
    for spec in TASKS.values():
        if spec.synthetic_writer:
            pkgutil.resolve_name(spec.synthetic_writer)(dest, rng)
    (dest / "SYNTHETIC.txt").write_text(f"avalanche-onehead synthetic benchmark v{VERSION}, seed {seed}\n")
    return dest


def synthetic_root(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Path of the cached benchmark for ``seed``, generated atomically on first use."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache / f"synthetic-v{VERSION}-seed{seed}"
    if (final / "SYNTHETIC.txt").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=cache))
    try:
        generate(tmp / "data", seed)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "data", final)
    except FileExistsError:
        pass  # another process finished first
    except OSError:
        if not (final / "SYNTHETIC.txt").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
