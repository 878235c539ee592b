"""Linear probes of what a checkpoint's layers know about an image-level task (classification
by default).

The yardstick for an image-level read-out such as classification's: a logistic regression
(L-BFGS, on standardised features, fitted on the train split, scored on val) on the global
average of

* the backbone's stride-32 features (what ImageNet pre-training offers),
* the neck's output (the input of the one head),
* the head's last hidden layer (the input of the output layer: an image-level task's output,
  e.g. the classification logits, is a linear map of its global average under the default
  mean pooling; under ``"pool": "lse"`` it is not, and the probe is a yardstick, not a bound),
* with ``semantic_channels``, those fixed channels alone (what no stage can take away),

next to the model's own Top-1 on that task.  Any task whose output is an image-level vector
(``TaskSpec.reduce`` pools its map) and whose targets are class indices can be probed; a dense
task cannot.  ``python experiments/probe.py --weights W [--task T]`` prints them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .feature_cache import BackboneFeatures
from .tasks import TASKS


#: the task probed when none is named
DEFAULT_TASK = "cls"


def check_probed_task(task: str) -> None:
    """A probe reads an image-level output: refuse an unknown task, or one whose output is a map."""
    if task not in TASKS:
        raise ValueError(f"probe: unknown task {task!r} (known: {', '.join(TASKS)})")
    if TASKS[task].reduce is None:
        raise ValueError(f"probe: task {task!r} ({TASKS[task].title}) has a dense output, not an image-level "
                         "vector; a linear probe reads image-level tasks only")


def class_indices(task: str, targets: list[Any]) -> np.ndarray:
    """The task's targets of a split as one class index per image (what the logistic regression
    is fitted to); a task whose targets are not class indices is refused."""
    labels = TASKS[task].collate(list(targets))
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"probe: task {task!r} ({TASKS[task].title}) has no class index per image to probe")
    return labels.numpy()


@torch.no_grad()
def pooled_features(model, loader, task: str = DEFAULT_TASK) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Global averages of the three probed layers, the model's output for ``task`` and the
    class index of every image."""
    k = model.neck.semantic_channels
    out: dict[str, list] = {"backbone": [], "neck": [], "head": [], "logits": [], **({"semantic": []} if k else {})}
    targets = []
    for x, y in loader:
        feats = BackboneFeatures(tuple(model.backbone_features(x)))  # one backbone pass for both reads
        for name, value in model.global_averages(feats).items():
            out[name].append(value)
        out["logits"].append(model(feats)[task])
        targets += list(y)
    return {k: torch.cat(v).float().numpy() for k, v in out.items()}, class_indices(task, targets)


def fit_logistic(train: np.ndarray, y_train: np.ndarray, c: float = 1.0):
    """The probe: a scaler and a logistic regression (L-BFGS) fitted on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    return scaler, LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train), y_train)


def probe_accuracy(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray) -> float:
    scaler, clf = fit_logistic(train, y_train)
    return float(clf.score(scaler.transform(val), y_val))


@torch.no_grad()
def output_inputs(model, batches, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The global average of the output layer's input for every ``task`` sample of ``batches``
    (``(x, TaskBatch)`` pairs, x images or cached backbone features) and their class indices."""
    feats, labels = [], []
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        for x, y in batches:
            if task not in y:
                continue
            pooled = model.global_averages(x.to(device))["head"]
            feats.append(pooled[y[task].index.to(device)].float().cpu())
            labels.append(y[task].target.cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError(f"no {task} sample to fit the {task} output channels on")
    return torch.cat(feats), torch.cat(labels)


def fit_output_rows(model, batches, task: str, c: float = 1.0) -> dict[str, Any]:
    """Set ``task``'s rows of the output layer to the optimum of a logistic regression on the
    global average of that layer's input: the model's own logits are then exactly the fitted
    regression's (under the default mean pooling an image-level output is a linear map of that
    average, so the scaler folds into the weights).  Linear probe, then fine-tune (Kumar et al.,
    ICLR 2022), with the probe solved instead of approximated by SGD epochs.  Returns what was
    fitted on (samples, features, classes, training accuracy)."""
    check_probed_task(task)
    if model.cfg.pool != "mean":
        raise ValueError(f"a logistic fit of {task}'s output channels needs the mean pooling "
                         f"(its logits are then linear in the pooled features), not pool {model.cfg.pool!r}")
    x, y = output_inputs(model, batches, task)
    layer = model.head[-1]
    rows = model.output_slices()[task]
    reads = layer.reads(rows) if hasattr(layer, "reads") else torch.ones(x.shape[1], dtype=torch.bool)
    x, y = x[:, reads].double().numpy(), y.numpy()
    classes = np.unique(y)
    if len(classes) < 2:  # a smoke run's few images: no regression to fit, the one class always wins
        weight, bias = np.zeros((1, x.shape[1])), np.zeros(1)
        accuracy = 1.0
    else:
        scaler, clf = fit_logistic(x, y, c)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, the logit of the second
            coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
        weight = coef / scaler.scale_
        bias = intercept - weight @ scaler.mean_
        accuracy = float(clf.score(scaler.transform(x), y))
    n_rows = rows.stop - rows.start
    w = torch.zeros(n_rows, layer.in_channels, dtype=torch.float64)
    b = torch.full((n_rows,), float(bias.min()) - 10.0, dtype=torch.float64)  # classes never seen: never chosen
    w[torch.as_tensor(classes)[:, None], reads.nonzero()[:, 0][None]] = torch.from_numpy(weight)
    b[classes] = torch.from_numpy(bias)
    with torch.no_grad():
        layer.weight[rows] = w[:, :, None, None].to(layer.weight)
        layer.bias[rows] = b.to(layer.bias)
    return {"samples": int(len(y)), "features": int(x.shape[1]), "classes": int(len(classes)),
            "train_accuracy": accuracy}


def probe_checkpoint(weights: str | Path, data_root: str | Path | None = None, batch: int = 16,
                     max_images: int | None = None, task: str = DEFAULT_TASK) -> dict[str, Any]:
    """Probe accuracies (val) of a checkpoint's backbone, neck and head on ``task``, and its own
    Top-1 on it; a task without an image-level output is a ValueError."""
    from .onnx_runtime import open_checkpoint

    check_probed_task(task)
    opened = open_checkpoint(weights, data_root)
    model, root = opened.model, opened.root
    feats = {}
    for split in ("train", "val"):
        ds = opened.split(task, split, max_images)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=lambda b: tuple(zip(*b)))
        loader = ((torch.stack(x), y) for x, y in loader)
        feats[split] = pooled_features(model, loader, task)
    (tr, ytr), (va, yva) = feats["train"], feats["val"]
    layers = [k for k in ("backbone", "neck", "head", "semantic") if k in tr]
    result = {f"probe_{k}": probe_accuracy(tr[k], ytr, va[k], yva) for k in layers}
    result["model_top1"] = float((va["logits"].argmax(1) == yva).mean())
    result.update(weights=str(weights), data_root=str(root.path), train_images=len(ytr), val_images=len(yva))
    return result
