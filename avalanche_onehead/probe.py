"""Linear probes of what a checkpoint's layers know about the classification task.

The yardstick for the classification read-out: a logistic regression (L-BFGS, on
standardised features, fitted on the train split, scored on val) on the global average of

* the backbone's stride-32 features (what ImageNet pre-training offers),
* the neck's output (the input of the one head),
* the head's last hidden layer (the input of the output layer: the classification logits
  are a linear map of its global average),

next to the model's own Top-1.  ``python experiments/probe.py --weights W`` prints them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def pooled_features(model, loader) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Global averages of the three probed layers, the model's classification logits, labels."""
    taps: dict[str, torch.Tensor] = {}
    hooks = [model.neck.register_forward_hook(lambda m, i, o: taps.__setitem__("neck", o)),
             model.head[-2].register_forward_hook(lambda m, i, o: taps.__setitem__("head", o))]
    out: dict[str, list] = {"backbone": [], "neck": [], "head": [], "logits": []}
    labels = []
    try:
        for x, y in loader:
            feats = model.backbone(x.contiguous(memory_format=torch.channels_last))
            pred = model(x)
            out["backbone"].append(feats[-1].mean((2, 3)))
            out["neck"].append(taps["neck"].mean((2, 3)))
            out["head"].append(taps["head"].mean((2, 3)))
            out["logits"].append(pred["cls"])
            labels += [t.label for t in y]
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v).float().numpy() for k, v in out.items()}, np.array(labels)


def probe_accuracy(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(train), y_train)
    return float(clf.score(scaler.transform(val), y_val))


def probe_checkpoint(weights: str | Path, data_root: str | Path | None = None, batch: int = 16,
                     max_images: int | None = None) -> dict[str, Any]:
    """Probe accuracies (val) of a checkpoint's backbone, neck and head, and its own Top-1."""
    from benchmarks import JointTransform, load_split
    from benchmarks.stream import data_root_of_checkpoint

    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(weights, "cpu")
    model = model.for_inference()
    root = data_root_of_checkpoint(data_root, meta)
    tf = JointTransform(int(meta["image_size"]), train=False, mean=model.mean, std=model.std)
    feats = {}
    for split in ("train", "val"):
        ds = load_split(root.path, "cls", split, tf)
        if max_images:
            ds.samples = ds.samples[:max_images]
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=lambda b: tuple(zip(*b)))
        loader = ((torch.stack(x), y) for x, y in loader)
        feats[split] = pooled_features(model, loader)
    (tr, ytr), (va, yva) = feats["train"], feats["val"]
    result = {f"probe_{k}": probe_accuracy(tr[k], ytr, va[k], yva) for k in ("backbone", "neck", "head")}
    result["model_top1"] = float((va["logits"].argmax(1) == yva).mean())
    result.update(weights=str(weights), data_root=str(root.path), train_images=len(ytr), val_images=len(yva))
    return result
