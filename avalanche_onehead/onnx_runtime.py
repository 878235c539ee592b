"""An exported model on ONNX Runtime, behind the interface of the PyTorch model.

:class:`OnnxModel` is called like ``OneHeadNet`` (images in, a ``OneHeadOutput`` of torch
tensors out) and has its ``predict``, ``cfg``, ``mean``/``std`` and ``task_order``, so
``eval.py``, the evaluators, the compliance card and ``predict.py`` run either runtime
through the same decoding code.  :func:`load_model` opens a ``.pt`` checkpoint or an
``.onnx`` export and returns the model with the checkpoint's metadata; :func:`open_checkpoint`
adds the data root and evaluation transform every command that reads a split needs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import CheckpointError
from .model import ModelConfig, OneHeadOutput
from .tasks import decode_batch

#: metadata_props key of an exported file holding the checkpoint's JSON (everything but the weights)
META_KEY = "avalanche_onehead"


def create_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on and ``threads`` intra-op
    threads (default: as many as PyTorch uses, so both runtimes are timed alike)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: no optimiser chatter on the console
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise CheckpointError(path, f"not a loadable ONNX model ({first})") from None


class OnnxModel:
    """An exported one-head model: ``model(images)`` -> ``OneHeadOutput`` on CPU."""

    runtime = "onnxruntime"
    training = False

    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(path, "ONNX file not found")
        self.path = path
        self.session = create_session(path, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise CheckpointError(path, f"no '{META_KEY}' metadata: not exported by experiments/export.py")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.cfg = ModelConfig.from_dict(self.meta["model_config"])
        self.task_settings = self.cfg.task_settings()  # the export was checked against the head already
        self.mean = tuple(self.meta["normalization"]["mean"])
        self.std = tuple(self.meta["normalization"]["std"])
        self.task_order = list(self.meta["onnx"]["outputs"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads = self.session.get_session_options().intra_op_num_threads

    def __call__(self, images: Tensor) -> OneHeadOutput:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        out = OneHeadOutput({t: torch.from_numpy(v) for t, v in zip(
            self.task_order, self.session.run(None, {self.input_name: x}))})
        return out

    # the PyTorch model's housekeeping calls, so callers need not tell the runtimes apart
    def eval(self) -> "OnnxModel":
        return self

    def to(self, device: Any) -> "OnnxModel":
        if str(device) != "cpu":
            raise CheckpointError(self.path, f"the ONNX Runtime model runs on the CPU, not {device}")
        return self

    def for_inference(self) -> "OnnxModel":
        return self  # exported already folded

    @torch.no_grad()
    def predict(self, images: Tensor, original_sizes: Sequence[tuple[int, int]] | None = None,
                tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Same as ``OneHeadNet.predict``: the task registry's decoding on the raw outputs."""
        return decode_batch(self(images), images.shape[-2:], images.shape[0], original_sizes, self.task_settings,
                            tasks or self.task_order)


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_model(path: str | Path, device: str = "cpu", threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``(model, metadata)`` of a ``.pt`` checkpoint (PyTorch, BatchNorm folded) or an
    ``.onnx`` export (ONNX Runtime, CPU); the metadata is the checkpoint's dictionary
    without the weights."""
    if is_onnx(path):
        model = OnnxModel(path, threads)
        model.to(device)
        return model, model.meta
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(path, device)
    return model.for_inference(), {k: v for k, v in meta.items() if k != "state_dict"}


@dataclass
class CheckpointWithData:
    """A checkpoint loaded for inference together with the data it is read against: what
    ``eval.py``, the probe, the box fit and the prediction figure all start from."""
    model: Any
    meta: dict[str, Any]
    root: Any  # benchmarks.stream.DataRoot
    transform: Any  # benchmarks.JointTransform at the checkpoint's input size

    def split(self, task: str, split: str, max_images: int | None = None, transformed: bool = True):
        """``task``'s reader on ``split`` (its first ``max_images`` images if given), transformed
        for the model unless ``transformed`` is False (the figure draws the raw images)."""
        from benchmarks import load_split

        ds = load_split(self.root.path, task, split, self.transform if transformed else None)
        if max_images:
            ds.samples = ds.samples[:max_images]
        return ds


def open_checkpoint(weights: str | Path, data_root: str | Path | None = None, device: str = "cpu",
                    onnx: bool = False) -> CheckpointWithData:
    """A ``.pt`` checkpoint (BatchNorm folded) or, with ``onnx``, an ``.onnx`` export ready for
    inference; the data root (given, else recorded in the checkpoint) and the evaluation transform.
    Without ``onnx`` an export is a CheckpointError: probing a model's layers needs its PyTorch form."""
    from benchmarks import JointTransform
    from benchmarks.stream import data_root_of_checkpoint

    if is_onnx(weights) and not onnx:
        raise CheckpointError(weights, "is an ONNX export; this command reads the .pt checkpoint it was exported from")
    model, meta = load_model(weights, device)
    root = data_root_of_checkpoint(data_root, meta)
    tf = JointTransform(int(meta["image_size"]), train=False, mean=model.mean, std=model.std)
    return CheckpointWithData(model, meta, root, tf)
