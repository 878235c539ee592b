"""Compliance card: parameters, head and neck structure, and inference latency.

    python -m avalanche_onehead.compliance --weights runs/X/model.pt
    python -m avalanche_onehead.compliance                # the default, untrained model

Latency is measured at 512 x 512, batch 1, WITH post-processing (detection
decoding + NMS, mask upsampling to the original size, softmax), after warm-up,
as the median of ``--runs`` timed calls on the chosen device, of the model as it is
deployed: ``OneHeadNet.for_inference()``, with BatchNorm folded into the convs.  The
card also gives the network's share of that time and, for comparison, the median of
the model as trained (BatchNorm not folded).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from .model import OneHeadNet, count_parameters

PARAM_LIMIT = 8_000_000
ORIGINAL_SIZE = (480, 640)  # (h, w) the predictions are decoded to: a typical VOC/COCO photo


def head_report(model: OneHeadNet) -> dict:
    head = model.head
    layers = list(head.children())
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    sequential = isinstance(head, nn.Sequential) and all(
        isinstance(m, (nn.Sequential, nn.Conv2d)) for m in layers)
    last = layers[-1]
    return {
        "layers": len(layers),
        "conv_layers": len(convs),
        "single_branch": bool(sequential and isinstance(last, nn.Conv2d)),
        "output_channels": int(last.out_channels),
        "output_groups": {t: [s.start, s.stop] for t, s in model.output_slices().items()},
        "ok": bool(2 <= len(layers) <= 3 and sequential),
    }


def neck_report(model: OneHeadNet) -> dict:
    n_out = sum(1 for m in model.neck.output.modules() if isinstance(m, nn.Conv2d))
    return {"type": "FPN (one layer: lateral 1x1 per level, top-down sum, one 3x3 output conv)",
            "lateral_convs": len(model.neck.lateral), "output_convs": n_out, "ok": n_out == 1}


@torch.no_grad()
def measure_latency(model: OneHeadNet, size: int = 512, runs: int = 30, warmup: int = 5,
                    device: str = "cpu", orig_size: tuple[int, int] = ORIGINAL_SIZE, fold: bool = True) -> dict:
    """Median wall time of ``predict`` (network + decoding), and of the network alone, so
    a report can say where the time goes.  ``fold=False`` times the model as trained
    (BatchNorm not folded), for comparison."""
    model = model.to(device)
    model = model.for_inference() if fold else model.eval()
    x = torch.randn(1, 3, size, size, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def timed(call) -> list[float]:
        for _ in range(warmup):
            call()
        sync()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        return times

    full = timed(lambda: model.predict(x, [orig_size]))
    network = timed(lambda: model(x))
    return {"median_ms": statistics.median(full), "min_ms": min(full), "max_ms": max(full),
            "network_median_ms": statistics.median(network),
            "runs": runs, "warmup": warmup, "image_size": size, "original_size": list(orig_size), "batch": 1, "device": str(device),
            "threads": torch.get_num_threads(), "post_processing": True, "batchnorm_folded": fold}


def card(model: OneHeadNet, latency: dict | None) -> dict:
    params = count_parameters(model)
    return {
        "backbone": model.cfg.backbone,
        "params": params,
        "params_ok": params["total"] < PARAM_LIMIT,
        "head": head_report(model),
        "neck": neck_report(model),
        "latency": latency,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m avalanche_onehead.compliance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="checkpoint (default: build the default model)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="when no --weights is given")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--no-latency", action="store_true")
    args = p.parse_args(argv)
    from .checkpoint import load_checkpoint
    from .cli import fail
    from .model import create_model

    with fail():
        if args.weights:
            model, _ = load_checkpoint(args.weights, args.device)
        else:
            model = create_model(args.backbone, pretrained=False)
        lat = None
        if not args.no_latency:
            lat = measure_latency(model, args.size, args.runs, args.warmup, args.device)
            unfolded = measure_latency(model, args.size, args.runs, args.warmup, args.device, fold=False)
            lat["unfolded_median_ms"] = unfolded["median_ms"]
        out = card(model, lat)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
