"""Predict on your own images: per image a picture, a JSON and the tasks' own files.

    python experiments/predict.py --weights weights/onehead.pt --out preds photo.jpg folder/

For ``NAME.jpg`` it writes ``NAME.png`` (a panel per task that draws one, under a title line
per task that gives one), ``NAME.json`` (the image's size, then a section per task) and each
task's own file.  Every task says its part in its own module (``TaskSpec.predict_output``);
this module loops over the tasks of the checkpoint, and a task without that hook is left out.
With the built-in tasks ``NAME.png`` shows the segmentation overlay with a legend of the
classes present, the detected boxes with class names and scores, and the top-3 classes;
``NAME.json`` holds the boxes in ORIGINAL pixels with class names, scores and COCO category
ids, the class probabilities by name and the classes present in the mask; and
``NAME_mask.png`` is the class index of every pixel, as a VOC palette PNG. ``.pt``
checkpoints run on PyTorch, ``.onnx`` exports on ONNX Runtime, through the same decoding.
Every input is opened before anything is written, so a bad one stops the command with
nothing written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .tasks import TASKS, PredictionContext

if TYPE_CHECKING:
    from PIL.Image import Image

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
    """The checkpoint's ``n`` class names of ``task``, or placeholders when it has none."""
    names = list(meta.get("classes", {}).get(task) or [])
    return names if len(names) == n else [f"{task} class {i}" for i in range(n)]


def output_tasks(task_order: Sequence[str]) -> list[str]:
    """The model's tasks that have a part in the output (``TaskSpec.predict_output``), in the
    order of their sections in the JSON; the others are left out."""
    tasks = [t for t in task_order if t in TASKS and TASKS[t].predict_output is not None]
    return sorted(tasks, key=lambda t: (TASKS[t].predict_output.position, TASKS[t].label))


def prediction_contexts(meta: dict[str, Any], tasks: Sequence[str], name: str, min_score: float = MIN_SCORE,
                        max_boxes: int = MAX_BOXES) -> dict[str, PredictionContext]:
    """What each task's output hooks take for the image whose files are called ``name``."""
    num_classes = meta["model_config"]["num_classes"]
    out = {}
    for t in tasks:
        suffix = TASKS[t].predict_output.suffix
        out[t] = PredictionContext(class_names(meta, t, int(num_classes[t])),
                                   list(meta.get("class_keys", {}).get(t) or []),
                                   f"{name}{suffix}" if suffix else None, min_score, max_boxes)
    return out


def prediction_record(pred: dict[str, Any], size: tuple[int, int],
                      contexts: dict[str, PredictionContext]) -> dict[str, Any]:
    """The JSON of one image's prediction (``pred`` from ``model.predict``): its size, then each
    task's section, in the order of ``contexts`` (see :func:`output_tasks`)."""
    record: dict[str, Any] = {"height": size[0], "width": size[1]}
    for t, ctx in contexts.items():
        spec = TASKS[t].predict_output
        record[spec.key] = spec.record(pred[t], ctx)
    return record


def summary_line(record: dict[str, Any]) -> str:
    """The words of every task in ``record`` that has a summary, in the record's order (what the
    command prints per image)."""
    outputs = {spec.predict_output.key: spec.predict_output for spec in TASKS.values() if spec.predict_output}
    return ", ".join(outputs[k].summary(v) for k, v in record.items() if k in outputs and outputs[k].summary)


def save_picture(image: Image, pred: dict[str, Any], record: dict[str, Any], contexts: dict[str, PredictionContext],
                 path: Path) -> None:
    """A panel per task that draws one (label order: segmentation overlay with its legend |
    detections), under the title lines of the tasks that give one (the top-3 classes); just the
    image when no task draws a panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = {t: TASKS[t].predict_output for t in contexts}
    panels = sorted((t for t, o in outputs.items() if o.panel is not None), key=lambda t: TASKS[t].label)
    captions = [o.caption(record[o.key]) for o in outputs.values() if o.caption is not None]
    w, h = image.size
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 6 * h / max(w, 1) + 1.2), squeeze=False)
    for ax, t in zip(axes[0], panels or [None]):
        ax.imshow(image)
        if t is not None:
            outputs[t].panel(ax, pred[t], record[outputs[t].key], contexts[t])
    for ax in axes[0]:
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
    if captions:
        fig.suptitle("\n".join(captions), fontsize=11)
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
    tasks = output_tasks(model.task_order)
    records = []
    for path, name in zip(paths, output_names(paths)):
        image = open_rgb(path)
        size = (image.height, image.width)
        x, _ = tf(image, {})
        with torch.no_grad():
            pred = model.predict(x[None].to(device), [size], tasks=tasks)[0]
        contexts = prediction_contexts(meta, tasks, name, min_score, max_boxes)
        record = {"image": str(path), "weights": str(weights), "runtime": getattr(model, "runtime", "pytorch"),
                  **prediction_record(pred, size, contexts)}
        files = []
        for t, ctx in contexts.items():
            write = TASKS[t].predict_output.write
            if write is not None:
                write(pred[t], out_dir / ctx.file)
                files.append(ctx.file)
        save_picture(image, pred, record, contexts, out_dir / f"{name}.png")
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        record["written"] = [str(out_dir / f) for f in (f"{name}.png", f"{name}.json", *files)]
        records.append(record)
    return records
