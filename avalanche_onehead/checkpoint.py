"""Self-contained checkpoints: one file, loadable with ``torch.load(weights_only=True)``.

It holds the weights, the model config, class lists, the COCO category-id map,
the normalisation, the input size, where the data came from and how it was
trained; nothing else is needed to rebuild and evaluate the model.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .model import ModelConfig, OneHeadNet

FORMAT = "avalanche-onehead"
VERSION = 1


def save_checkpoint(path: str | Path, model: OneHeadNet, *, classes: dict[str, list[str]],
                    class_keys: dict[str, list[str]] | None = None, category_ids: list[int] | None = None,
                    image_size: int = 512, data: dict[str, Any] | None = None,
                    provenance: dict[str, Any] | None = None) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": {k: list(v) for k, v in classes.items()},
        "class_keys": {k: list(v) for k, v in (class_keys or {}).items()},
        "category_ids": [int(c) for c in (category_ids or [])],
        "normalization": {"mean": list(model.mean), "std": list(model.std)},
        "image_size": int(image_size),
        "data": dict(data or {}),
        "provenance": dict(provenance or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, or a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(path, f"not a readable checkpoint ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not an avalanche-onehead checkpoint (no 'format' marker)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(path, f"checkpoint version {payload['version']} is newer than this code ({VERSION})")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[OneHeadNet, dict[str, Any]]:
    """Rebuild the model (no weight download: the state dict has everything) and return it in eval mode."""
    payload = read_checkpoint(path)
    cfg = ModelConfig.from_dict(payload["model_config"])
    model = OneHeadNet(cfg, pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(path, f"weights do not fit the recorded model config ({str(e).splitlines()[0]})") from None
    model.mean = tuple(payload["normalization"]["mean"])
    model.std = tuple(payload["normalization"]["std"])
    return model.to(device).eval(), payload
