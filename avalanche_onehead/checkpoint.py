"""Self-contained checkpoints: one file, loadable with ``torch.load(weights_only=True)``.

It holds the weights, the model config, class lists and their keys (the COCO category
ids of detection's classes, the folder names of classification's), the normalisation,
the input size, where the data came from and how it was trained; nothing else is
needed to rebuild and evaluate the model.  (Checkpoints written before also hold
``category_ids``, a copy of detection's class keys, which loading ignores.)
"""
from __future__ import annotations

import math
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
                    class_keys: dict[str, list[str]] | None = None,
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
    except (OSError, RuntimeError) as e:  # disk full: torch's zip writer raises RuntimeError
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [e.__class__.__name__])[0][:100]
        raise CheckpointError(path, f"could not be written ({reason})") from None
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
    version = payload.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(path, f"checkpoint 'version' {version!r} is not a number")
    if version > VERSION:
        raise CheckpointError(path, f"checkpoint version {payload['version']} is newer than this code ({VERSION})")
    check_payload(payload, path)
    return payload


def _numbers(v: Any, n: int | None = None) -> bool:
    return isinstance(v, (list, tuple)) and (n is None or len(v) == n) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


def check_payload(payload: dict[str, Any], path: Path) -> None:
    """Every entry that loading and evaluating read, of the right kind; else one error naming it."""
    def bad(key: str, what: str):
        raise CheckpointError(path, f"damaged checkpoint: '{key}' {what}")

    if not isinstance(payload.get("model_config"), dict):
        bad("model_config", "is missing or not a dictionary")
    sd = payload.get("state_dict")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        bad("state_dict", "is missing or not a dictionary of tensors")
    norm = payload.get("normalization")
    if not (isinstance(norm, dict) and _numbers(norm.get("mean"), 3) and _numbers(norm.get("std"), 3)
            and all(s > 0 for s in norm["std"])):
        bad("normalization", "is missing or not {'mean': [3 numbers], 'std': [3 positive numbers]}")
    size = payload.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        bad("image_size", f"is missing or not a positive whole number ({size!r})")
    classes = payload.get("classes")
    if not (isinstance(classes, dict) and all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                              for v in classes.values())):
        bad("classes", "is missing or not a dictionary of class-name lists")
    keys = payload.get("class_keys", {})
    if not (isinstance(keys, dict) and all(isinstance(v, list) for v in keys.values())):
        bad("class_keys", "is not a dictionary of lists")
    for key in ("data", "provenance"):
        if not isinstance(payload.get(key, {}), dict):
            bad(key, "is not a dictionary")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[OneHeadNet, dict[str, Any]]:
    """Rebuild the model (no weight download: the state dict has everything) and return it in eval mode."""
    payload = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
        model = OneHeadNet(cfg, pretrained=False)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(path, f"its model config cannot be built ({e.__class__.__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:120]})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(path, f"weights do not fit the recorded model config ({str(e).splitlines()[0]})") from None
    model.mean = tuple(payload["normalization"]["mean"])
    model.std = tuple(payload["normalization"]["std"])
    return model.to(device).eval(), payload
