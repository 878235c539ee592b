"""Figures for a run folder: the metric matrix heatmap and the forgetting bars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
