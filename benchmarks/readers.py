"""Dataset readers, one per on-disk format, each returning ``(image, typed target)``.

* :class:`CocoDetection` - COCO instances JSON via pycocotools; contiguous labels
  mapped through the JSON's own ``categories`` (never ``category_id - 1``).
* :class:`VocSegmentation` - palette PNG masks read as class indices (255 = ignore).
* :class:`FolderClassification` - one folder per class, index = sorted folder name.

Each reader finds its files in the common layouts (see ``find_split_dir``), does
cheap consistency checks when built and full decoding checks in ``validate()``.
Every problem is a :class:`DatasetError` that names the file.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from avalanche_onehead.tasks.cls import ClsTarget
from avalanche_onehead.tasks.det import DetTarget
from avalanche_onehead.tasks.seg import SegTarget

from .errors import DatasetError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


@contextlib.contextmanager
def _open_image(path: Path, what: str = "image"):
    """``Image.open`` whose failures are one :class:`DatasetError` naming the file.

    Images above Pillow's ``MAX_IMAGE_PIXELS`` (89 M pixels) are refused before any
    decoding: beyond it Pillow only warns up to twice the limit, then raises.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(path, f"{what} file is missing") from None
    except PermissionError:
        raise DatasetError(path, f"{what} file cannot be read (permission denied)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(path, f"{what} is too large to decode ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        detail = (str(e).splitlines() or [""])[0][:80]
        raise DatasetError(path, f"unreadable or corrupt {what} ({e.__class__.__name__}"
                           f"{': ' + detail if detail else ''})") from None


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _as_rgb(im: Image.Image) -> Image.Image:
    """RGB, with 16/32-bit grayscale scaled to 8 bits (Pillow's own ``convert`` clips
    them, so a 16-bit PNG would come out all white)."""
    if im.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 0..65535 -> 0..255
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def open_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale, 16-bit and palette images converted)."""
    with _open_image(path) as im:
        return _as_rgb(im)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    with _open_image(path) as im:
        return im.size


def list_dir(folder: Path) -> list[Path]:
    """The sorted entries of ``folder``; an unreadable folder is a :class:`DatasetError`."""
    try:
        return sorted(Path(folder).iterdir())
    except PermissionError:
        raise DatasetError(folder, "folder cannot be read (permission denied)") from None
    except OSError as e:
        raise DatasetError(folder, f"folder cannot be read ({e.strerror or e.__class__.__name__})") from None


# Detection boxes that cannot be learned or scored are dropped, and counted by reason
# (``python -m benchmarks`` reports the counts): a bbox with a NaN or infinite value, a
# width or height <= 0, or one that is under 1 px wide or tall once clipped to the image
# (far outside it, or tiny). Every other box is clipped to the image.
BOX_DROP_REASONS = {"not_finite": "a NaN or infinite value", "non_positive_size": "width or height <= 0",
                    "outside_or_tiny": "under 1 px wide or tall once clipped to the image"}


def clean_box(bbox: list[float], width: int, height: int) -> tuple[list[float] | None, str | None]:
    """COCO ``[x, y, w, h]`` -> (xyxy clipped to the image, None) or (None, the drop reason)."""
    x, y, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        return None, "not_finite"
    if bw <= 0 or bh <= 0:
        return None, "non_positive_size"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, float(width)), min(y + bh, float(height))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None, "outside_or_tiny"
    return [x0, y0, x1, y1], None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_coco_document(doc: Any, path: Path) -> None:
    """The shape pycocotools and the reader rely on; anything else names the entry."""
    if not isinstance(doc, dict):
        raise DatasetError(path, f"not a COCO instances file: the top level is a JSON {type(doc).__name__}, "
                           "not an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(path, f"not a COCO instances file: missing '{key}' list")
    seen: dict[int, str] = {}
    for k, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise DatasetError(path, f"images[{k}] has no integer 'id'")
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(path, f"image {im['id']} (images[{k}]) has no 'file_name'")
        for dim in ("width", "height"):
            if dim in im and not (_is_int(im[dim]) and im[dim] > 0):
                raise DatasetError(path, f"image {im['id']} ({name}) has a bad '{dim}' {im[dim]!r}")
        if im["id"] in seen:
            raise DatasetError(path, f"image id {im['id']} is listed twice ({seen[im['id']]} and {name})")
        seen[im["id"]] = name
    cats: set[int] = set()
    for k, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DatasetError(path, f"categories[{k}] has no integer 'id'")
        if not isinstance(c.get("name", ""), str):
            raise DatasetError(path, f"category {c['id']} has a 'name' that is not a string")
        if c["id"] in cats:
            raise DatasetError(path, f"category id {c['id']} is listed twice")
        cats.add(c["id"])
    if not cats:
        raise DatasetError(path, "the 'categories' list is empty")
    anns: set[int] = set()
    for k, a in enumerate(doc["annotations"]):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            raise DatasetError(path, f"annotations[{k}] has no integer 'id'")
        what = f"annotation {a['id']}"
        if a["id"] in anns:
            raise DatasetError(path, f"annotation id {a['id']} is listed twice")
        anns.add(a["id"])
        for key in ("image_id", "category_id"):
            if not _is_int(a.get(key)):
                raise DatasetError(path, f"{what} has no integer '{key}'")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DatasetError(path, f"{what} has a bad 'bbox' {str(box)[:60]} (expected [x, y, width, height])")
        if a.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(path, f"{what} has a bad 'iscrowd' {a.get('iscrowd')!r} (expected 0 or 1)")


def find_task_dir(root: Path, folder: str) -> Path:
    """``root/folder`` (or ``root`` itself when it is that folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "data root does not exist or is not a folder")
    for cand in (root / folder, root):
        if cand.name == folder and cand.is_dir():
            return cand
    raise DatasetError(root / folder, f"task folder '{folder}' not found under the data root")


def find_split_dir(task_dir: Path, split: str) -> Path | None:
    """The folder holding ``split``: ``task/split``, ``task/images/split`` or deeper."""
    for cand in (task_dir / split, task_dir / "images" / split):
        if cand.is_dir():
            return cand
    deeper = sorted(p for p in task_dir.glob(f"*/{split}") if p.is_dir())
    deeper += sorted(p for p in task_dir.glob(f"*/*/{split}") if p.is_dir())
    return deeper[0] if deeper else None


class TaskDataset(torch.utils.data.Dataset):
    """Common behaviour: sample list, optional joint transform, classes.  A task names its
    reader in its spec (``TaskSpec.reader``)."""

    def __init__(self, transform: Callable | None = None):
        self.transform = transform
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[Image.Image, dict[str, Any]]:
        raise NotImplementedError

    def _require_split_dir(self, split: str, what: str) -> Path:
        split_dir = find_split_dir(self.task_dir, split)
        if split_dir is None:
            raise DatasetError(self.task_dir / split, f"no '{split}' {what}")
        return split_dir

    def make_target(self, raw: dict[str, Any]) -> Any:
        raise NotImplementedError

    def view(self, i: int) -> tuple[Any, dict[str, Any]]:
        """Sample ``i`` under the transform, its target still raw (what :class:`Mosaic` tiles)."""
        image, raw = self.load(i)
        if self.transform is not None:
            image, raw = self.transform(image, raw)
        return image, raw

    def __getitem__(self, i: int):
        image, raw = self.view(i)
        return image, self.make_target(raw)

    def validate(self) -> None:
        """Decode every file once; raises :class:`DatasetError` on the first bad one."""
        for i in range(len(self)):
            self.load(i)

    def image_path(self, i: int) -> Path:
        return self.samples[i][0]

    def check_item(self, i: int, deep: bool = False) -> Counter:
        """Check sample ``i`` cheaply (image header), or decode it fully when ``deep``;
        returns the counts of what the reader drops from it (detection boxes, by reason)."""
        if deep:
            self.load(i)
        else:
            image_size(self.image_path(i))
        return Counter()

    def summary(self) -> dict[str, Any]:
        return {"images": len(self), "path": str(self.split_dir)}

    def dropped_summary(self, dropped: Counter) -> dict[str, Any]:
        """What a data check reports of what :meth:`check_item` counted as dropped (nothing here)."""
        return {}

    def task_summary(self) -> dict[str, Any]:
        """What a data check reports of the task beyond its classes (nothing here)."""
        return {}

    @property
    def class_keys(self) -> list[str]:
        """Stable identity of each class (index, COCO category id, folder name)."""
        return [str(i) for i in range(len(self.classes))]


class CocoDetection(TaskDataset):
    """COCO-format detection: ``split/`` images + the single JSON that describes them."""

    def __init__(self, task_dir: Path, split: str, transform: Callable | None = None):
        super().__init__(transform)
        self.task_dir = Path(task_dir)
        self.split_dir = self._require_split_dir(split, "image folder for detection")
        self.json_path = self._find_json(split)
        self._load_json()

    def _find_json(self, split: str) -> Path:
        inside = sorted(self.split_dir.rglob("*.json"))
        if not inside:
            ann = self.task_dir / "annotations"
            inside = sorted(p for p in ann.glob("*.json") if split in p.stem.lower()) if ann.is_dir() else []
        if not inside:
            inside = sorted(p for p in self.task_dir.glob("*.json") if split in p.stem.lower())
        if not inside:
            raise DatasetError(self.split_dir, f"no COCO annotation JSON found for split '{split}' "
                               f"(looked inside it and in {self.task_dir / 'annotations'})")
        if len(inside) > 1:
            names = ", ".join(p.name for p in inside)
            raise DatasetError(self.split_dir, f"several candidate annotation JSONs for split '{split}': {names}")
        return inside[0]

    def _load_json(self) -> None:
        from pycocotools.coco import COCO

        try:
            data = json.loads(self.json_path.read_text())
        except PermissionError:
            raise DatasetError(self.json_path, "annotation file cannot be read (permission denied)") from None
        except (OSError, ValueError, RecursionError) as e:
            raise DatasetError(self.json_path, f"not a readable JSON file ({str(e)[:120]})") from None
        check_coco_document(data, self.json_path)
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        self.coco = coco
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in cats]
        self.cat_to_label = {cid: i for i, cid in enumerate(self.category_ids)}
        self.classes = [str(c.get("name", c["id"])) for c in cats]
        known_images = set(coco.imgs)
        for a in data["annotations"]:
            if a.get("category_id") not in self.cat_to_label:
                raise DatasetError(self.json_path, f"annotation {a.get('id')} has category_id "
                                   f"{a.get('category_id')} absent from 'categories'")
            if a.get("image_id") not in known_images:
                raise DatasetError(self.json_path, f"annotation {a.get('id')} points at unknown image_id "
                                   f"{a.get('image_id')}")
        self.samples = []
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            path = self._resolve(info["file_name"])
            self.samples.append((img_id, path, info))

    def _resolve(self, file_name: str) -> Path:
        for base in (self.split_dir, self.split_dir / "images", self.task_dir / "images", self.task_dir):
            for cand in (base / file_name, base / Path(file_name).name):
                if cand.is_file():
                    return cand
        raise DatasetError(self.split_dir / file_name, f"image listed in {self.json_path.name} is missing")

    def image_path(self, i: int) -> Path:
        return self.samples[i][1]

    def check_item(self, i: int, deep: bool = False) -> Counter:
        """The image header against the JSON's width/height, and the boxes the reader drops."""
        img_id, path, info = self.samples[i]
        w, h = open_rgb(path).size if deep else image_size(path)
        if "width" in info and "height" in info and (info["width"], info["height"]) != (w, h):
            raise DatasetError(path, f"image is {w}x{h} pixels but {self.json_path.name} says "
                               f"{info['width']}x{info['height']} (its boxes would be misplaced)")
        reasons = (clean_box(a["bbox"], w, h)[1] for a in self.coco.imgToAnns.get(img_id, []))
        return Counter(r for r in reasons if r)

    def load(self, i: int):
        img_id, path, info = self.samples[i]
        image = open_rgb(path)
        w, h = image.size
        boxes, labels, crowd = [], [], []
        for a in self.coco.imgToAnns.get(img_id, []):
            box, _ = clean_box(a["bbox"], w, h)
            if box is None:
                continue
            boxes.append(box)
            labels.append(self.cat_to_label[a["category_id"]])
            crowd.append(int(a.get("iscrowd", 0)))
        raw = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "iscrowd": torch.tensor(crowd, dtype=torch.long),
            "image_id": int(img_id),
            "orig_size": (h, w),
        }
        return image, raw

    def make_target(self, raw):
        crowd = raw["iscrowd"].bool()
        boxes = torch.as_tensor(raw["boxes"], dtype=torch.float32).reshape(-1, 4)
        size = raw.get("input_size", raw["orig_size"])
        return DetTarget(
            boxes=boxes[~crowd], labels=raw["labels"][~crowd],
            crowd_boxes=boxes[crowd], crowd_labels=raw["labels"][crowd],
            image_id=raw["image_id"], orig_size=tuple(raw["orig_size"]), input_size=tuple(size),
        )

    @property
    def class_keys(self) -> list[str]:
        return [str(c) for c in self.category_ids]

    def summary(self):
        anns = self.coco.dataset["annotations"]
        return {**super().summary(), "json": str(self.json_path), "boxes": len(anns),
                "crowd_boxes": sum(1 for a in anns if a.get("iscrowd", 0)),
                "category_ids": {str(cid): i for i, cid in enumerate(self.category_ids)}}

    def dropped_summary(self, dropped: Counter) -> dict[str, Any]:
        return {"dropped_boxes": {"total": sum(dropped.values()), **{r: dropped.get(r, 0) for r in BOX_DROP_REASONS}}}

    def task_summary(self) -> dict[str, Any]:
        return {"category_ids": [int(c) for c in self.category_ids]}


def _read_class_names(task_dir: Path) -> dict[str, str]:
    """``classes.txt`` lines ``<key> <name>`` when present."""
    f = task_dir / "classes.txt"
    if not f.is_file():
        return {}
    out = {}
    for line in f.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


class VocSegmentation(TaskDataset):
    """VOC-style segmentation: JPEG images + palette PNG masks of class indices."""

    IMAGE_DIRS = ("JPEGImages", "images", "imgs")
    MASK_DIRS = ("SegmentationClass", "masks", "labels", "annotations")

    def __init__(self, task_dir: Path, split: str, transform: Callable | None = None,
                 num_classes: int = 21):
        super().__init__(transform)
        self.task_dir = Path(task_dir)
        self.num_classes = num_classes
        names = _read_class_names(self.task_dir)
        self.classes = [names.get(str(i), VOC_CLASSES[i] if i < len(VOC_CLASSES) else str(i))
                        for i in range(num_classes)]
        self.samples = self._find_pairs(split)

    def _pair_dirs(self, base: Path) -> tuple[Path, Path] | None:
        imgs = next((base / d for d in self.IMAGE_DIRS if (base / d).is_dir()), None)
        masks = next((base / d for d in self.MASK_DIRS if (base / d).is_dir()), None)
        return (imgs, masks) if imgs and masks else None

    def _find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        split_dir = find_split_dir(self.task_dir, split)
        ids: list[str] | None = None
        if split_dir is not None:
            dirs = self._pair_dirs(split_dir)
            if dirs is None:  # image and mask side by side
                dirs = (split_dir, split_dir)
        else:  # VOC layout: one JPEGImages/SegmentationClass + an id list per split
            dirs = self._pair_dirs(self.task_dir)
            lists = [self.task_dir / f"{split}.txt",
                     self.task_dir / "ImageSets" / "Segmentation" / f"{split}.txt"]
            id_file = next((f for f in lists if f.is_file()), None)
            if dirs is None or id_file is None:
                raise DatasetError(self.task_dir / split, f"no '{split}' split for segmentation")
            ids = [s.strip() for s in id_file.read_text().split() if s.strip()]
            split_dir = self.task_dir
        self.split_dir = split_dir
        img_dir, mask_dir = dirs
        in_images = list_dir(img_dir)
        in_masks = in_images if mask_dir == img_dir else list_dir(mask_dir)
        images = {p.stem: p for p in in_images if _is_image(p) and p.suffix.lower() != ".png"}
        if img_dir != mask_dir:
            images.update({p.stem: p for p in in_images if _is_image(p) and p.suffix.lower() == ".png"
                           and p.stem not in images})
        masks = {p.stem: p for p in in_masks if p.suffix.lower() == ".png" and p.is_file()}
        if ids is not None:
            images = {k: images[k] for k in ids if k in images}
        if not images:
            raise DatasetError(img_dir, "no images found for segmentation")
        missing = [k for k in images if k not in masks]
        if missing:
            raise DatasetError(mask_dir / f"{missing[0]}.png", f"mask missing for image "
                               f"{images[missing[0]].name} ({len(missing)} image(s) without mask)")
        return [(images[k], masks[k]) for k in sorted(images)]

    def read_mask(self, mask_path: Path, image_size_wh: tuple[int, int]) -> np.ndarray:
        """Palette/indexed PNG -> (H, W) uint8 class ids, checked."""
        with _open_image(mask_path, "mask") as m:
            mode = m.mode
            if mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(mask_path, f"mask is mode {mode}, expected a palette (P) or "
                                   "single-channel PNG of class indices (an RGB colour mask cannot be used)")
            arr = np.array(m)
        if (arr.shape[1], arr.shape[0]) != tuple(image_size_wh):
            raise DatasetError(mask_path, f"mask size {arr.shape[1]}x{arr.shape[0]} differs from its image "
                               f"{image_size_wh[0]}x{image_size_wh[1]}")
        bad = np.setdiff1d(np.unique(arr), np.r_[np.arange(self.num_classes), 255])
        if bad.size:
            raise DatasetError(mask_path, f"mask values {bad.tolist()[:5]} outside 0..{self.num_classes - 1} and 255")
        return arr.astype(np.uint8)

    def check_item(self, i: int, deep: bool = False) -> Counter:
        """The image header (or the decoded image) and the decoded mask: mode, size, values."""
        img_path, mask_path = self.samples[i]
        self.read_mask(mask_path, open_rgb(img_path).size if deep else image_size(img_path))
        return Counter()

    def load(self, i: int):
        img_path, mask_path = self.samples[i]
        image = open_rgb(img_path)
        mask = self.read_mask(mask_path, image.size)
        return image, {"mask": torch.from_numpy(mask)}

    def make_target(self, raw):
        return SegTarget(mask=torch.as_tensor(raw["mask"]).long())


class FolderClassification(TaskDataset):
    """ImageNet-style folders: ``split/<class>/<image>``; index = sorted folder name."""

    def __init__(self, task_dir: Path, split: str, transform: Callable | None = None):
        super().__init__(transform)
        self.task_dir = Path(task_dir)
        self.split_dir = split_dir = self._require_split_dir(split, "folder for classification")
        self.wnids = sorted(p.name for p in list_dir(split_dir) if p.is_dir())
        if not self.wnids:
            raise DatasetError(split_dir, "no class folders found")
        names = _read_class_names(self.task_dir)
        self.classes = [names.get(w, w) for w in self.wnids]
        self.samples = []
        for label, w in enumerate(self.wnids):
            files = [p for p in list_dir(split_dir / w) if _is_image(p)]
            if not files:
                raise DatasetError(split_dir / w, "class folder holds no images")
            self.samples += [(p, label) for p in files]

    @property
    def class_keys(self) -> list[str]:
        return list(self.wnids)

    def load(self, i: int):
        path, label = self.samples[i]
        return open_rgb(path), {"label": label}

    def make_target(self, raw):
        return ClsTarget(label=int(raw["label"]))
