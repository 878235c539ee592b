"""Figures for a run folder: the metric matrix heatmap and the forgetting bars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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
    colours = ["tab:red" if d > 5 else "tab:green" for d in drops]
    bx.bar(range(len(tasks)), drops, color=colours)
    bx.axhline(5, color="k", ls="--", lw=1, label="5 % limit")
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
                     per_task: int = 4, score_threshold: float = 0.3, max_boxes: int = 5,
                     split: str = "val") -> Path:
    """Predictions of a checkpoint on ``per_task`` images spread over each task's split
    (see :func:`prediction_figure`), saved to ``path``."""
    from benchmarks import JointTransform, load_split
    from benchmarks.stream import data_root_of_checkpoint

    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(weights)
    model = model.for_inference()
    root = data_root_of_checkpoint(data_root, meta).path
    tf = JointTransform(meta["image_size"], train=False, mean=model.mean, std=model.std)
    tasks = [t for t in ("seg", "det", "cls") if t in meta["classes"]]
    fig = prediction_figure(model, {t: load_split(root, t, split) for t in tasks}, meta["classes"], tf,
                            per_task=per_task, score_threshold=score_threshold, max_boxes=max_boxes)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def prediction_figure(model, datasets: dict[str, Any], classes: dict[str, list[str]], transform,
                      per_task: int = 4, score_threshold: float = 0.3, max_boxes: int = 5):
    """One row per task of ``datasets`` (readers with ``load(i)``), ``per_task`` images spread
    over each: segmentation (ground truth | prediction overlays), detection (the ``max_boxes``
    best predicted boxes solid, ground truth dashed) and classification (predicted vs true
    label).  ``model`` must be in eval mode; the figure is returned open."""
    import torch
    from matplotlib.patches import Rectangle

    from benchmarks.synthetic import voc_palette

    colours = np.asarray(voc_palette(), dtype=float).reshape(-1, 3) / 255
    tasks = [t for t in ("seg", "det", "cls") if t in datasets]
    device = next(model.parameters()).device
    fig, axes = plt.subplots(len(tasks), per_task, figsize=(3.2 * per_task, 3.0 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        ds = datasets[task]
        names = classes[task]
        for col in range(per_task):
            ax = axes[row][col]
            ax.axis("off")
            shown = per_task // 2 if task == "seg" else per_task  # seg: truth and prediction side by side
            k = col // 2 if task == "seg" else col
            if k >= len(ds):
                continue
            i = k * len(ds) // shown  # spread over the split (class folders are sorted)
            image, raw = ds.load(i)
            x, _ = transform(image, dict(raw))
            with torch.no_grad():
                pred = model.predict(x[None].to(device), [(image.height, image.width)], tasks=[task])[0][task]
            ax.imshow(image)
            if task == "seg":
                mask = raw["mask"].numpy() if col % 2 == 0 else pred.cpu().numpy()
                rgba = np.concatenate([colours[mask], (mask > 0)[..., None] * (mask < 255)[..., None] * 0.55], -1)
                ax.imshow(rgba)
                present = sorted({int(c) for c in np.unique(mask) if 0 < c < 255})
                ax.set_title(("truth: " if col % 2 == 0 else "predicted: ")
                             + (", ".join(names[c] for c in present[:3]) or "background only"), fontsize=8)
            elif task == "det":
                pred = type(pred)(pred.boxes.cpu(), pred.scores.cpu(), pred.labels.cpu())
                for b in raw["boxes"].tolist():
                    ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ls="--",
                                           ec="white", lw=1.2))
                keep = (pred.scores >= score_threshold) & (torch.arange(len(pred.scores)) < max_boxes)
                for b, s, lab in zip(pred.boxes[keep].tolist(), pred.scores[keep].tolist(), pred.labels[keep].tolist()):
                    ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", lw=1.5))
                    ax.text(b[0], b[1], f"{names[lab]} {s:.2f}", color="black", fontsize=6,
                            bbox={"facecolor": "yellow", "alpha": 0.8, "pad": 1, "lw": 0})
                ax.set_title(f"top {int(keep.sum())} boxes ≥ {score_threshold} (truth dashed)", fontsize=8)
            else:
                p = pred.float().cpu()
                k = int(p.argmax())
                ok = k == int(raw["label"])
                ax.set_title(f"predicted {names[k]} ({float(p[k]):.2f})\ntrue {names[int(raw['label'])]}",
                             fontsize=8, color="green" if ok else "red")
    fig.tight_layout()
    return fig
