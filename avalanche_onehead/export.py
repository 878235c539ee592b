"""ONNX export: the deployed model as one self-contained ``.onnx`` file.

    python experiments/export.py --weights runs/X/model.pt --out model.onnx

What is exported is ``OneHeadNet.for_inference()`` (BatchNorm folded into the convs):
input ``image`` (batch, 3, S, S), normalised like the checkpoint says, dynamic batch;
outputs the raw per-task maps in task-label order, ``seg`` (B, 21, S/8, S/8) logits,
``det`` (B, C+5, S/8, S/8) raw map, ``cls`` (B, 10) logits, so that decoding, NMS and
mask upsampling stay the same Python code for both runtimes.  The file's
``metadata_props`` carry everything the checkpoint carries besides the weights (model
config with the detection decoding settings, classes and their keys, normalisation,
input size, provenance) under :data:`META_KEY`, so ``eval.py`` and the compliance card
need no other file.  After writing, ONNX Runtime is checked against PyTorch on a random
batch of two; a difference beyond :data:`ATOL` + :data:`RTOL` x |PyTorch| is an error and
nothing is left behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import FORMAT, load_checkpoint
from .errors import CheckpointError
from .model import OneHeadNet
from .onnx_runtime import META_KEY, create_session

#: a recent opset that PyTorch's exporter and current ONNX Runtime both support fully
OPSET = 18
#: stated agreement with PyTorch: |onnx - torch| <= ATOL + RTOL * |torch| on every output
ATOL, RTOL = 1e-4, 1e-3


class RawOutputs(nn.Module):
    """The model as a graph can return it: a tuple of raw task outputs in task-label order."""

    def __init__(self, model: OneHeadNet):
        super().__init__()
        self.model = model
        self.tasks = list(model.task_order)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        out = self.model(image)
        return tuple(out[t] for t in self.tasks)


def onnx_metadata(payload: dict[str, Any], tasks: list[str], opset: int) -> dict[str, str]:
    """``metadata_props`` of the exported file: the checkpoint minus its weights, as JSON."""
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["onnx"] = {"input": "image", "outputs": tasks, "opset": opset, "batchnorm_folded": True,
                    "tolerance": {"atol": ATOL, "rtol": RTOL}}
    return {META_KEY: json.dumps(meta), "format": FORMAT}


def export_onnx(weights: str | Path, out: str | Path, opset: int = OPSET, check: bool = True) -> dict[str, Any]:
    """Export checkpoint ``weights`` to ``out``; returns what was written and the measured
    difference to PyTorch.  Written atomically: a failed export or check leaves no file."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the output file must end in .onnx")
    model, payload = load_checkpoint(weights)
    report = export_model(model, payload, out, opset, check)
    return {**report, "weights": str(weights)}


def export_model(model: OneHeadNet, meta: dict[str, Any], out: str | Path, opset: int = OPSET,
                 check: bool = True) -> dict[str, Any]:
    """Export a model with its checkpoint metadata (``meta``: at least ``image_size``,
    ``model_config`` and ``normalization``) to ``out``, atomically."""
    out = Path(out)
    net = RawOutputs(model.for_inference()).eval()
    size = int(meta["image_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        _export(net, example, Path(tmp), opset)
        _set_metadata(Path(tmp), onnx_metadata(meta, net.tasks, opset))
        diff = check_against_torch(tmp, net, example) if check else None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a normal file, not the private mode of a temporary one
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"onnx": str(out), "opset": opset, "image_size": size, "outputs": net.tasks,
            "bytes": out.stat().st_size, "max_abs_diff": diff, "tolerance": {"atol": ATOL, "rtol": RTOL}}


def model_metadata(model: OneHeadNet, image_size: int = 512) -> dict[str, Any]:
    """What a checkpoint would record for a model that has none (e.g. an untrained one)."""
    return {"format": FORMAT, "model_config": model.cfg.to_dict(), "classes": {}, "class_keys": {},
            "normalization": {"mean": list(model.mean), "std": list(model.std)},
            "image_size": int(image_size), "data": {}, "provenance": {}}


def _export(net: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    # the exporter narrates its steps on stdout and warns about its own internals: keep
    # a command's output to its result
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), input_names=["image"], output_names=net.tasks,
                          opset_version=opset, dynamic_shapes=({0: batch},), dynamo=True,
                          external_data=False, optimize=True, verbose=False)


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "avalanche-onehead"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_against_torch(path: str | Path, net: RawOutputs, example: Tensor) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per output on ``example``; raises beyond the tolerance."""
    session = create_session(path)
    got = session.run(None, {"image": example.numpy()})
    with torch.no_grad():
        want = net(example)
    diffs = {}
    for task, g, w in zip(net.tasks, got, want):
        g = torch.from_numpy(g)
        if g.shape != w.shape:
            raise CheckpointError(path, f"exported {task} output has shape {tuple(g.shape)}, PyTorch {tuple(w.shape)}")
        diffs[task] = float((g - w).abs().max())
        if not torch.allclose(g, w, rtol=RTOL, atol=ATOL):
            raise CheckpointError(path, f"exported {task} output differs from PyTorch by up to {diffs[task]:.2e} "
                                  f"(tolerance {ATOL:g} + {RTOL:g} x |value|)")
    return diffs
