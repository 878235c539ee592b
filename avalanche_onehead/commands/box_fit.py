"""How well a checkpoint's detection output sizes and names the boxes of a split: at each
ground-truth box's centre cell, the IoU of the box predicted there, its width and height over
the true ones and the probability of the true class, as medians per COCO size.  Ratios far
from 1 say the boxes have the wrong size; a low probability, the wrong class.

    python experiments/box_fit.py --weights runs/<run>/stage2_det.pt --data-root ../shared/data
    python experiments/box_fit.py --weights runs/<run>/model.pt --split val
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from avalanche_onehead.cli import OneLineParser, fail
    from avalanche_onehead.validation import int_flag, whole

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint written by experiments/run.py (.pt)")
    p.add_argument("--data-root", default=None, help="data folder (default: the one recorded in the checkpoint)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="the split whose boxes are fitted (default train: under-fitting shows there)")
    p.add_argument("--batch", type=int_flag(whole(1)), default=8)
    p.add_argument("--max-images", type=int_flag(whole(1)), default=None,
                   help="only the first N images (smoke tests)")
    args = p.parse_args(argv)
    from avalanche_onehead.box_fit import box_fit_checkpoint

    with fail():
        result = box_fit_checkpoint(args.weights, args.data_root, args.split, args.batch, args.max_images)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
