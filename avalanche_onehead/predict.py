"""Predict on your own images: one picture, one JSON and one mask per image.

    python experiments/predict.py --weights weights/onehead.pt --out preds photo.jpg folder/

For ``NAME.jpg`` it writes ``NAME.png`` (the segmentation overlay with a legend of the
classes present, the detected boxes with class names and scores, the top-3 classes),
``NAME.json`` (boxes in ORIGINAL pixels with class names, scores and COCO category ids,
the class probabilities by name, the classes present in the mask) and ``NAME_mask.png``
(the class index of every pixel, as a VOC palette PNG). ``.pt`` checkpoints run on
PyTorch, ``.onnx`` exports on ONNX Runtime, through the same decoding. Every input is
opened before anything is written, so a bad one stops the command with nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

#: boxes drawn on the picture (the JSON has every box the decoding keeps)
MIN_SCORE = 0.3
MAX_BOXES = 10


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named, and the images inside folders named (sorted, not recursive)."""
    from benchmarks.errors import DatasetError
    from benchmarks.readers import IMAGE_EXTS

    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not inside:
                raise DatasetError(item, f"no images in this folder ({', '.join(sorted(IMAGE_EXTS))})")
            found += inside
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTS:
                raise DatasetError(item, f"not an image file (expected one of {', '.join(sorted(IMAGE_EXTS))})")
            found.append(item)
        else:
            raise DatasetError(item, "no such file or folder")
    if not found:
        raise ValueError("no images given")
    return list(dict.fromkeys(found))


def output_names(paths: Sequence[Path]) -> list[str]:
    """One file stem per image, unique even when two folders hold the same name."""
    names, taken = [], set()
    for p in paths:
        name = p.stem
        if name in taken:
            name = f"{p.parent.name}_{p.stem}" if p.parent.name else name
        base, k = name, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        names.append(name)
    return names


def class_names(meta: dict[str, Any], task: str, n: int) -> list[str]:
    names = list(meta.get("classes", {}).get(task) or [])
    return names if len(names) == n else [f"{task} class {i}" for i in range(n)]


def prediction_record(pred: dict[str, Any], meta: dict[str, Any], size: tuple[int, int],
                      mask_file: str) -> dict[str, Any]:
    """The JSON of one image's prediction (``pred`` from ``model.predict``)."""
    det, probs, mask = pred["det"], pred["cls"].float().cpu(), pred["seg"].cpu()
    det_names = class_names(meta, "det", int(meta["model_config"]["num_classes"]["det"]))
    cls_names = class_names(meta, "cls", probs.numel())
    seg_names = class_names(meta, "seg", int(meta["model_config"]["num_classes"]["seg"]))
    ids = meta.get("class_keys", {}).get("det") or []  # detection's class keys are its COCO category ids
    boxes = []
    for b, s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        box = {"label": det_names[c], "class_index": int(c), "score": round(float(s), 4),
               "box_xyxy": [round(float(v), 1) for v in b]}
        if c < len(ids):
            box["category_id"] = int(ids[c])
        boxes.append(box)
    order = probs.argsort(descending=True).tolist()
    counts = torch.bincount(mask.flatten().long(), minlength=len(seg_names))
    present = {seg_names[i]: round(float(counts[i]) / mask.numel(), 4) for i in counts.argsort(descending=True).tolist()
               if counts[i] > 0}
    return {
        "height": size[0], "width": size[1],
        "detections": boxes,
        "classification": {"top3": [{"label": cls_names[i], "probability": round(float(probs[i]), 4)}
                                    for i in order[:3]],
                           "probabilities": {cls_names[i]: round(float(probs[i]), 4) for i in order}},
        "segmentation": {"mask": mask_file, "classes_present": present},
    }


def save_mask(mask: torch.Tensor, path: Path) -> None:
    """Class indices as a palette PNG (the VOC colour map), readable like VOC's own masks."""
    from PIL import Image

    from .tasks.seg import voc_palette

    im = Image.fromarray(mask.cpu().numpy().astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def save_picture(image, pred: dict[str, Any], record: dict[str, Any], meta: dict[str, Any], path: Path,
                 min_score: float = MIN_SCORE, max_boxes: int = MAX_BOXES) -> None:
    """Two panels (segmentation overlay with its legend | detections) under the top-3 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from .tasks.seg import palette_colours

    mask = pred["seg"].cpu().numpy()
    colours = palette_colours()
    seg_names = class_names(meta, "seg", int(meta["model_config"]["num_classes"]["seg"]))
    w, h = image.size
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 6 * h / max(w, 1) + 1.2))
    ax.imshow(image)
    alpha = (mask > 0) * 0.55
    ax.imshow(np.concatenate([colours[mask], alpha[..., None]], -1))
    present = [i for i in np.unique(mask).tolist() if 0 < i < len(seg_names)]  # background not overlaid
    if present:
        ax.legend(handles=[Patch(color=colours[i], label=seg_names[i]) for i in present], loc="lower left",
                  fontsize=8, framealpha=0.8)
    ax.set_title("segmentation" + ("" if present else ": background only"), fontsize=10)
    bx.imshow(image)
    shown = [d for d in record["detections"] if d["score"] >= min_score][:max_boxes]
    for d in shown:
        x0, y0, x1, y1 = d["box_xyxy"]
        bx.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.8))
        bx.text(x0, y0, f"{d['label']} {d['score']:.2f}", color="black", fontsize=8, va="bottom",
                bbox={"facecolor": "yellow", "alpha": 0.85, "pad": 1, "lw": 0})
    bx.set_title(f"detection: {len(shown)} boxes with score ≥ {min_score:g}", fontsize=10)
    for a in (ax, bx):
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
        a.axis("off")
    top = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in record["classification"]["top3"])
    fig.suptitle(f"classification, top 3: {top}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict_files(weights: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  min_score: float = MIN_SCORE, max_boxes: int = MAX_BOXES, device: str = "cpu",
                  threads: int | None = None) -> list[dict[str, Any]]:
    """Predict every image of ``inputs`` with ``weights`` (.pt or .onnx) into ``out_dir``;
    returns the JSON records (with the files written)."""
    from benchmarks import JointTransform
    from benchmarks.readers import open_rgb

    from .onnx_runtime import load_model

    if not 0 <= min_score <= 1:
        raise ValueError(f"--min-score: must be within 0..1, not {min_score}")
    paths = collect_images(inputs)
    model, meta = load_model(weights, device, threads)
    for p in paths:  # every image must open before anything is written
        open_rgb(p)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tf = JointTransform(int(meta["image_size"]), train=False, mean=model.mean, std=model.std)
    records = []
    for path, name in zip(paths, output_names(paths)):
        image = open_rgb(path)
        size = (image.height, image.width)
        x, _ = tf(image, {})
        with torch.no_grad():
            pred = model.predict(x[None].to(device), [size])[0]
        record = {"image": str(path), "weights": str(weights), "runtime": getattr(model, "runtime", "pytorch"),
                  **prediction_record(pred, meta, size, f"{name}_mask.png")}
        save_mask(pred["seg"], out_dir / f"{name}_mask.png")
        save_picture(image, pred, record, meta, out_dir / f"{name}.png", min_score, max_boxes)
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        record["written"] = [str(out_dir / f"{name}{s}") for s in (".png", ".json", "_mask.png")]
        records.append(record)
    return records
