"""Figures for a run folder: the metric matrix heatmap and the forgetting bars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from . import rules
from .tasks import TASKS


def matrix_figure(metrics: dict[str, Any]):
    """Left: metric of every task (columns) after every stage (rows). Right: drop vs baseline."""
    tasks = metrics["tasks"]
    names = [f"{t}\n{metrics['metric_names'][t]}" for t in tasks]
    m = np.asarray(metrics["matrix"], dtype=float)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(tasks)), names)
    stages = metrics.get("stages", tasks)
    ax.set_yticks(range(len(m)), [f"after {t}" for t in stages[: len(m)]])
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center",
                    color="white" if m[i, j] < 0.6 else "black", fontsize=9)
    ax.set_title(f"{metrics['strategy']}: metric after each stage")
    fig.colorbar(im, ax=ax, fraction=0.046)
    drops = [metrics["drop_pct"].get(t, 0.0) for t in tasks]
    colours = ["tab:green" if rules.within_drop_bar(d) else "tab:red" for d in drops]
    bx.bar(range(len(tasks)), drops, color=colours)
    bx.axhline(rules.DROP_BAR_PCT, color="k", ls="--", lw=1, label=f"{rules.DROP_BAR_PCT:g} % limit")
    bx.axhline(0, color="k", lw=0.5)
    bx.set_xticks(range(len(tasks)), tasks)
    bx.set_ylabel("drop vs baseline (%)")
    bx.set_title("forgetting (relative)")
    bx.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def figure_to_tensor(fig):
    """(3, H, W) uint8 tensor of a figure, closed afterwards (for TensorBoard images)."""
    import torch

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def save_matrix_figure(metrics: dict[str, Any], path: str | Path) -> Path:
    fig = matrix_figure(metrics)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def qualitative_grid(weights: str | Path, path: str | Path, data_root: str | Path | None = None,
                     per_task: int = 4, split: str = "val") -> Path:
    """Predictions of a checkpoint on ``per_task`` images spread over each task's split
    (see :func:`prediction_figure`), saved to ``path``."""
    from .onnx_runtime import open_checkpoint

    opened = open_checkpoint(weights, data_root)
    tasks = [t for t in drawn_tasks() if t in opened.meta["classes"]]
    fig = prediction_figure(opened.model, {t: opened.split(t, split, transformed=False) for t in tasks},
                            opened.meta["classes"], opened.transform, per_task=per_task)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def drawn_tasks() -> list[str]:
    """The tasks that can draw their predictions, in label order."""
    return [t for t, spec in TASKS.items() if spec.draw is not None]


def prediction_figure(model, datasets: dict[str, Any], classes: dict[str, list[str]], transform,
                      per_task: int = 4):
    """One row per task of ``datasets`` (readers with ``load(i)``), ``per_task`` panels spread
    over each split, every panel drawn by its task (``TaskSpec.draw``) over the image:
    segmentation ground truth | prediction overlays, detection boxes, classification labels.
    ``model`` must be in eval mode; the figure is returned open."""
    import torch

    tasks = [t for t in drawn_tasks() if t in datasets]
    device = next(model.parameters()).device
    fig, axes = plt.subplots(len(tasks), per_task, figsize=(3.2 * per_task, 3.0 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        ds, spec = datasets[task], TASKS[task]
        shown = per_task // spec.panels  # images in the row: each takes ``panels`` side by side
        for col in range(per_task):
            ax = axes[row][col]
            ax.axis("off")
            k = col // spec.panels
            if k >= len(ds):
                continue
            i = k * len(ds) // shown  # spread over the split (class folders are sorted)
            image, raw = ds.load(i)
            x, _ = transform(image, dict(raw))
            with torch.no_grad():
                pred = model.predict(x[None].to(device), [(image.height, image.width)], tasks=[task])[0][task]
            ax.imshow(image)
            spec.draw(ax, raw, pred, classes[task], col % spec.panels)
    fig.tight_layout()
    return fig
