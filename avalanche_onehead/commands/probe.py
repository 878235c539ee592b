"""Linear probes of a checkpoint: how much of an image-level task (classification by default)
its backbone, neck and head features hold, next to its own Top-1 (val).  The yardstick for the
classification read-out.

    python experiments/probe.py --weights runs/<run>/stage1_seg.pt --data-root data
    python experiments/probe.py --weights runs/<run>/model.pt --task cls
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avalanche_onehead.cli import OneLineParser, fail
from avalanche_onehead.validation import int_flag, whole


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, nargs="+", help="checkpoint(s) written by experiments/run.py")
    p.add_argument("--data-root", default=None, help="data folder (default: the one recorded in the checkpoint)")
    p.add_argument("--max-images", type=int_flag(whole(1)), default=None, help="only the first N images per split (smoke tests)")
    p.add_argument("--task", default=None,
                   help="the task probed: one with an image-level output (default: classification, cls)")
    args = p.parse_args(argv)
    from avalanche_onehead.probe import DEFAULT_TASK, probe_checkpoint

    with fail():
        results = [probe_checkpoint(w, args.data_root, max_images=args.max_images, task=args.task or DEFAULT_TASK)
                   for w in args.weights]
    print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
