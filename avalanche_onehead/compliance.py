"""Compliance card: parameters, head and neck structure, and inference latency.

    python -m avalanche_onehead.compliance --weights runs/X/model.pt
    python -m avalanche_onehead.compliance --weights runs/X/model.pt --runtime both
    python -m avalanche_onehead.compliance --weights model.onnx      # ONNX Runtime
    python -m avalanche_onehead.compliance                # the default, untrained model

Latency is measured at 512 x 512, batch 1, WITH post-processing (detection
decoding + NMS, mask upsampling to the original size, softmax), after warm-up,
as the median of ``--runs`` timed calls on the chosen device, of the model as it is
deployed: ``OneHeadNet.for_inference()``, with BatchNorm folded into the convs, on
PyTorch, or its ONNX export on ONNX Runtime (``--runtime onnxruntime``; a ``.pt`` is
exported to a temporary file first).  Both runtimes get the same image and the same
post-processing code.  The card also gives the network's and the post-processing's
share of that time and, for PyTorch, the median of the model as trained (BatchNorm
not folded).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import rules
from .model import Carry, OneHeadNet, Residual, count_parameters

ORIGINAL_SIZE = (480, 640)  # (h, w) the predictions are decoded to: a typical VOC/COCO photo


def head_report(model: OneHeadNet) -> dict:
    head = model.head
    layers = list(head.children())
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    # a residual layer (x + relu(conv x)) is one layer of the one branch, as every layer of the
    # <= 3-layer transformer head the challenge allows is residual; a layer that carries the
    # neck's fixed semantic channels on next to its output (Carry) is one layer too
    sequential = isinstance(head, nn.Sequential) and all(
        isinstance(m, (nn.Sequential, nn.Conv2d, Residual, Carry)) for m in layers)
    last = layers[-1]
    return {
        "layers": len(layers),
        "conv_layers": len(convs),
        "single_branch": bool(sequential and isinstance(last, nn.Conv2d)),
        "residual_layers": sum(isinstance(m, Residual) or getattr(m, "residual", False) for m in layers),
        "carried_semantic_channels": model.neck.semantic_channels,
        "output_channels": int(last.out_channels),
        "output_groups": {t: [s.start, s.stop] for t, s in model.output_slices().items()},
        "ok": bool(rules.head_layers_allowed(len(layers)) and sequential),
    }


def neck_report(model: OneHeadNet) -> dict:
    n_out = sum(1 for m in model.neck.output.modules() if isinstance(m, nn.Conv2d))
    return {"type": "FPN (one layer: lateral 1x1 per level, top-down sum, one 3x3 output conv)",
            "lateral_convs": len(model.neck.lateral), "output_convs": n_out,
            "fixed_semantic_channels": model.neck.semantic_channels, "ok": rules.neck_allowed(n_out)}


def latency_image(size: int = 512) -> torch.Tensor:
    """The one (random, seeded) image every runtime is timed on."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def measure_latency(model: Any, size: int = 512, runs: int = 30, warmup: int = 5,
                    device: str = "cpu", orig_size: tuple[int, int] = ORIGINAL_SIZE, fold: bool = True) -> dict:
    """Median wall time of ``predict`` (network + decoding), of the network alone and of the
    decoding alone, so a report can say where the time goes.  ``model`` is a ``OneHeadNet``
    or an ``OnnxModel``; ``fold=False`` times the PyTorch model as trained (BatchNorm not
    folded), for comparison."""
    from .tasks import TASKS

    model = model.to(device)
    model = model.for_inference() if fold else model.eval()
    x = latency_image(size).to(device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def timed(call: Callable[[], Any]) -> list[float]:
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
    raw = model(x)
    settings = model.task_settings
    post = {t: statistics.median(timed(lambda t=t: TASKS[t].decode(raw[t][0], orig_size, **settings[t])))
            for t in model.task_order}
    runtime = getattr(model, "runtime", "pytorch")
    threads = getattr(model, "threads", None) or torch.get_num_threads()
    return {"median_ms": statistics.median(full), "min_ms": min(full), "max_ms": max(full),
            "network_median_ms": statistics.median(network),
            "post_processing_median_ms": sum(post.values()),
            "post_processing_median_ms_by_task": post,
            "runs": runs, "warmup": warmup, "image_size": size, "original_size": list(orig_size), "batch": 1,
            "device": str(device), "runtime": runtime, "threads": threads, "post_processing": True,
            "batchnorm_folded": fold}


def card(model: OneHeadNet, latency: dict | None) -> dict:
    """The model against the rules: the challenge's (``*_ok``) and the project's own bars
    (``*_within_project_bar``); a latency verdict only when latency was measured."""
    params = count_parameters(model)
    out = {
        "backbone": model.cfg.backbone,
        "params": params,
        "params_ok": rules.params_allowed(params["total"]),
        "params_within_project_bar": rules.params_within_project_limit(params["total"]),
        "head": head_report(model),
        "neck": neck_report(model),
        "latency": latency,
    }
    if latency is not None:
        out["latency_bar_ms"] = rules.LATENCY_BAR_MS
        out["latency_within_project_bar"] = rules.latency_within_bar(latency["median_ms"])
    return out


RUNTIMES = ("pytorch", "onnxruntime", "both")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m avalanche_onehead.compliance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None,
                   help="checkpoint (.pt) or ONNX export (.onnx); default: build the default model")
    p.add_argument("--backbone", default=None,
                   help="when no --weights is given: the default recipe's model on this timm backbone "
                        "(default: the recipe's own, experiments/configs/default.json)")
    p.add_argument("--runtime", default=None, choices=RUNTIMES,
                   help="what runs the network: pytorch (default for .pt), onnxruntime (default for .onnx) "
                        "or both (a .pt is exported to a temporary .onnx)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of both runtimes (default: PyTorch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--no-latency", action="store_true")
    args = p.parse_args(argv)
    from .cli import fail

    with fail():
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads: must be at least 1, not {args.threads}")
            torch.set_num_threads(args.threads)
        out = run_card(args)
    print(json.dumps(out, indent=2))
    return 0


def default_recipe_model(backbone: str | None = None) -> OneHeadNet:
    """The network the default recipe trains (its backbone and model settings; random weights:
    the card counts and times, it does not predict), on ``backbone`` when one is given."""
    from .commands.run import default_recipe
    from .model import create_model
    from .training import RunConfig

    recipe = RunConfig.from_dict(default_recipe())  # RunConfig's defaults where the recipe is silent
    return create_model(backbone or recipe.backbone, pretrained=False, **recipe.model)


def run_card(args: argparse.Namespace) -> dict:
    from .checkpoint import load_checkpoint
    from .errors import CheckpointError
    from .model import ModelConfig
    from .onnx_runtime import OnnxModel, is_onnx

    onnx_file = args.weights if args.weights and is_onnx(args.weights) else None
    runtime = args.runtime or ("onnxruntime" if onnx_file else "pytorch")
    if onnx_file and runtime != "onnxruntime":
        raise CheckpointError(onnx_file, f"--runtime {runtime} needs a .pt checkpoint; an .onnx runs on onnxruntime")
    if onnx_file:
        ort_model = OnnxModel(onnx_file, args.threads)
        model = OneHeadNet(ModelConfig.from_dict(ort_model.meta["model_config"]), pretrained=False)
    else:
        ort_model = None
        if args.weights:
            model, _ = load_checkpoint(args.weights, args.device)
        else:
            model = default_recipe_model(args.backbone)
    latency: dict[str, dict] = {}
    if not args.no_latency:
        def measure(m: Any, **kw: Any) -> dict:
            return measure_latency(m, args.size, args.runs, args.warmup, args.device, **kw)

        if runtime in ("pytorch", "both"):
            lat = measure(model)
            lat["unfolded_median_ms"] = measure(model, fold=False)["median_ms"]
            latency["pytorch"] = lat
        if runtime in ("onnxruntime", "both"):
            if str(args.device) != "cpu":
                raise ValueError(f"--device: the ONNX Runtime measurement runs on the CPU, not {args.device}")
            with tempfile.TemporaryDirectory() as tmp:
                if ort_model is None:
                    from .export import export_model, model_metadata

                    path = Path(tmp) / "model.onnx"
                    export_model(model.cpu(), model_metadata(model, args.size), path)
                    ort_model = OnnxModel(path, args.threads)
                latency["onnxruntime"] = measure(ort_model)
    out = card(model, latency.get("pytorch") or latency.get("onnxruntime"))
    if len(latency) > 1:
        out["latency_by_runtime"] = latency
    return out


if __name__ == "__main__":
    sys.exit(main())
