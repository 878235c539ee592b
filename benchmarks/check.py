"""Check a data root before anything is trained or written: the same readers, every sample.

``check_data`` is what ``python -m benchmarks`` prints and what ``experiments/run.py``
runs before it creates a run folder, so bad data is one :class:`DatasetError` line
instead of a traceback from inside a DataLoader worker halfway through a stage.

The quick check reads image headers (size, mode, Pillow's pixel limit), decodes
the masks (mode, size against the image, values 0..20 and 255) and checks the COCO
JSON's shape, ids and image sizes; ``deep=True`` also decodes every image.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from avalanche_onehead.tasks import TASKS

from .readers import BOX_DROP_REASONS, SPLITS, find_split_dir, find_task_dir
from .stream import check_classes, load_split


def available_splits(root: Path, task: str) -> list[str]:
    """``train`` (always required) and whichever of ``val``/``test`` the task folder has."""
    task_dir = find_task_dir(root, TASKS[task].folder)
    return [s for s in SPLITS if s == "train" or find_split_dir(task_dir, s) is not None
            or (task_dir / f"{s}.txt").is_file()]


def check_data(root: str | Path, tasks: Iterable[str], splits: Iterable[str] | None = None,
               deep: bool = False, max_images: int | None = None, progress: bool = False) -> dict[str, Any]:
    """A summary per task (folder, classes, images and dropped boxes per split); raises
    :class:`DatasetError` on the first problem.  ``splits=None``: every split present;
    ``max_images``: only the first images of every split, as a smoke run uses them."""
    root = Path(root)
    report: dict[str, Any] = {}
    for task in tasks:
        task_dir = find_task_dir(root, TASKS[task].folder)
        datasets, entries = [], {}
        for split in (list(splits) if splits is not None else available_splits(root, task)):
            ds = load_split(root, task, split)
            if max_images:
                ds.samples = ds.samples[:max_images]
            dropped: Counter = Counter()
            for i in tqdm(range(len(ds)), desc=f"checking {task}/{split}", leave=False, file=sys.stderr,
                          disable=not progress or None):  # no bars when stderr is not a terminal
                dropped += ds.check_item(i, deep=deep)
            entries[split] = {**ds.summary(), **ds.dropped_summary(dropped)}
            datasets.append(ds)
        check_classes(task, datasets)
        report[task] = {"folder": str(task_dir), "num_classes": len(datasets[0].classes),
                        "classes": datasets[0].classes, "splits": entries, **datasets[0].task_summary()}
    return report


def dropped_box_notes(report: dict[str, Any]) -> list[str]:
    """One line per split whose detection boxes were dropped, saying how many and why."""
    notes = []
    for task_entry in report.values():
        for split, entry in task_entry.get("splits", {}).items():
            d = entry.get("dropped_boxes", {})
            if d.get("total"):
                why = ", ".join(f"{d[r]} {text}" for r, text in BOX_DROP_REASONS.items() if d.get(r))
                notes.append(f"{entry.get('json', split)}: {d['total']} of {entry['boxes']} boxes dropped ({why})")
    return notes
