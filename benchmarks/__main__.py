"""``python -m benchmarks --data-root DIR``: check that a data root loads, print a JSON summary."""
from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from avalanche_onehead.tasks import TASKS, parse_tasks

from .errors import DatasetError
from .readers import SPLITS, find_split_dir, find_task_dir
from .stream import check_classes, load_split, resolve_data_root


def inspect(root, tasks, deep: bool = True) -> dict:
    report: dict = {}
    for task in tasks:
        task_dir = find_task_dir(root, TASKS[task].folder)
        splits = {}
        datasets = []
        for split in SPLITS:
            if split != "train" and find_split_dir(task_dir, split) is None and not (task_dir / f"{split}.txt").is_file():
                continue
            ds = load_split(root, task, split)
            if deep:
                for i in tqdm(range(len(ds)), desc=f"checking {task}/{split}", leave=False, file=sys.stderr,
                              disable=None):  # no progress bars when stderr is not a terminal
                    ds.load(i)
            splits[split] = ds.summary()
            datasets.append(ds)
        check_classes(task, datasets)
        entry = {"folder": str(task_dir), "num_classes": len(datasets[0].classes),
                 "classes": datasets[0].classes, "splits": splits}
        if task == "det":
            entry["category_ids"] = [int(c) for c in datasets[0].category_ids]
        report[task] = entry
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--data-root", default=None,
                   help="folder holding mini_voc_seg/, mini_coco_det/, imagenette_160/ "
                        "(default: ./data if it exists, else the embedded synthetic benchmark)")
    p.add_argument("--tasks", default="all", help="comma-separated subset of seg,det,cls (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic benchmark")
    p.add_argument("--quick", action="store_true", help="skip decoding every image and mask")
    args = p.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
        root = resolve_data_root(args.data_root, args.seed)
        out = {"data_root": str(root.path), "synthetic": root.synthetic,
               "tasks": inspect(root.path, tasks, deep=not args.quick)}
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
