"""Evaluate a one-head checkpoint: prints a JSON object with "mAP", "mIoU", "Top-1".

    python eval.py --weights your_model.pt --data_root data --tasks all

Without --data_root it evaluates on the data the checkpoint was trained on
(recorded inside it; the synthetic benchmark is regenerated if needed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def build_parser() -> argparse.ArgumentParser:
    from avalanche_onehead.cli import OneLineParser
    from avalanche_onehead.validation import device, flag_type, int_flag, whole

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True,
                   help="checkpoint written by experiments/run.py (.pt, PyTorch), or its ONNX export "
                        "(.onnx from experiments/export.py, run on ONNX Runtime on the CPU)")
    p.add_argument("--data_root", "--data-root", dest="data_root", default=None,
                   help="folder holding mini_coco_det/, mini_voc_seg/, imagenette_160/")
    p.add_argument("--tasks", default="all", help="all, or a comma list of seg,det,cls")
    p.add_argument("--split", default="val", help="train, val or test (default val)")
    p.add_argument("--batch", type=int_flag(whole(1)), default=8)
    p.add_argument("--device", type=flag_type(device), default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--workers", type=int_flag(whole(0)), default=2)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or found-data lines")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from avalanche_onehead.cli import fail
    from avalanche_onehead.validation import check_output_file

    with fail():
        check_output_file(args.out, "--out")  # before the evaluation, not after it
        result = evaluate(args)
        text = json.dumps(result, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def evaluate(args) -> dict:
    import torch

    from avalanche_onehead import validation
    from avalanche_onehead.errors import CheckpointError
    from avalanche_onehead.evaluation import evaluate_dataset
    from avalanche_onehead.onnx_runtime import is_onnx, open_checkpoint
    from avalanche_onehead.tasks import TASKS

    tasks = validation.task_flag("--tasks", args.tasks)
    if is_onnx(args.weights):
        device = args.device or "cpu"  # ONNX Runtime's CPU provider; another device is an error
    else:
        device = "cpu" if args.cpu else (args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # .pt: BatchNorm folded into the convs (faster, same predictions); .onnx: exported folded
    opened = open_checkpoint(args.weights, args.data_root, device, onnx=True)
    model, meta, root = opened.model, opened.meta, opened.root
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    say(root.describe())
    result: dict = {}
    for task in tasks:
        ds = opened.split(task, args.split)
        keys = meta.get("class_keys", {}).get(task)
        if keys and list(ds.class_keys) != list(keys):
            raise CheckpointError(args.weights, f"{task} classes of the data ({ds.split_dir}) differ from the "
                                  f"checkpoint's: data {ds.class_keys[:4]}..., checkpoint {keys[:4]}...")
        say(f"found {task}: {len(ds)} images in {ds.split_dir}")
        res = evaluate_dataset(model, ds, task, args.batch, device, args.workers, progress=not args.quiet)
        result[TASKS[task].metric_name] = res.pop(TASKS[task].metric_name)
        result.update({k: v for k, v in res.items() if "/" not in k})
        names = meta["classes"].get(task, [])
        per_class = {}
        for key, value in res.items():
            if "/" in key:  # "IoU/3", "AP/4", "Acc/2": per-class entries by class index
                idx = int(key.split("/", 1)[1])
                per_class[names[idx] if idx < len(names) else str(idx)] = value
        result[f"{task}_per_class"] = per_class
    result["split"] = args.split
    result["data_root"] = str(root.path)
    result["weights"] = str(args.weights)
    result["runtime"] = getattr(model, "runtime", "pytorch")
    return result


if __name__ == "__main__":
    sys.exit(main())
