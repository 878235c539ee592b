"""Export a checkpoint to ONNX (BatchNorm folded, dynamic batch), checked against PyTorch.

    python experiments/export.py --weights weights/onehead.pt --out model.onnx
    python eval.py --weights model.onnx --data_root data --tasks all     # on ONNX Runtime
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def main(argv=None) -> int:
    from avalanche_onehead.export import OPSET

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint written by experiments/run.py")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = p.parse_args(argv)
    from avalanche_onehead.cli import fail
    from avalanche_onehead.export import export_onnx

    with fail():
        report = export_onnx(args.weights, args.out, args.opset)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
