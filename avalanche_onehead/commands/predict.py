"""Predict on your own images: per image a picture, a JSON and a mask.

    python experiments/predict.py --weights weights/onehead.pt --out preds photo.jpg more_photos/
    python experiments/predict.py --weights model.onnx --out preds photo.jpg      # on ONNX Runtime

For NAME.jpg: NAME.png (segmentation overlay with a legend, boxes with class names and
scores, the top-3 classes), NAME.json (boxes in original pixels, class probabilities,
the mask file's name) and NAME_mask.png (class index per pixel, VOC palette).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path



def main(argv=None) -> int:
    from avalanche_onehead.predict import MAX_BOXES, MIN_SCORE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--weights", required=True, help="checkpoint (.pt) or ONNX export (.onnx)")
    p.add_argument("--out", required=True, help="folder for the pictures, JSONs and masks")
    p.add_argument("--min-score", type=float, default=MIN_SCORE,
                   help=f"boxes drawn from this score on (default {MIN_SCORE}; the JSON lists all)")
    p.add_argument("--max-boxes", type=int, default=MAX_BOXES, help=f"at most this many boxes drawn (default {MAX_BOXES})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (.pt only)")
    args = p.parse_args(argv)
    from avalanche_onehead.cli import fail
    from avalanche_onehead.predict import predict_files, summary_line

    with fail():
        records = predict_files(args.weights, args.inputs, args.out, args.min_score, args.max_boxes, args.device)
    for r in records:
        words = summary_line(r)
        print(f"{r['image']}: {words + ' ' if words else ''}-> {', '.join(Path(f).name for f in r['written'])}")
    print(f"written: {len(records)} image(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
