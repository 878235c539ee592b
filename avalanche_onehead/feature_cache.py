"""Frozen-backbone feature cache: compute the backbone once per training view, train neck + head.

When no stage of a run moves the backbone (no gradient, BatchNorm in eval mode), its
features of an image depend only on the pixels.  Forward + backward of neck + head on
precomputed features costs ~19 ms per 512 px image on two CPU cores against ~270 ms for
the whole network, so the run computes the backbone's three feature maps once per
*view* (a fixed, seeded set of augmented copies of every training image, plus the plain
resize) and trains from those.  The distillation teacher then also costs only a neck +
head pass, and evaluation after every stage reuses the cached validation features.

Features are stored in float16 (360 k values, 0.7 MB per 512 px view); a step on the
cache equals the step on live frozen features up to that rounding (tested).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn


@dataclass
class BackboneFeatures:
    """The backbone's feature maps of a batch (or, unbatched, of one view): what the model's
    neck takes instead of images.  Moves with ``.to(device)`` like every batch element."""

    maps: tuple[Tensor, ...]

    def to(self, device: torch.device | str, **kwargs: Any) -> "BackboneFeatures":
        return BackboneFeatures(tuple(m.to(device) for m in self.maps))

    @property
    def shape(self) -> torch.Size:  # Avalanche and the loggers read ``len(mb_x)`` / ``mb_x.shape[0]``
        return self.maps[0].shape

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    @staticmethod
    def stack(items: Sequence["BackboneFeatures"]) -> "BackboneFeatures":
        """Batch single views; float16 storage becomes float32 for the network."""
        return BackboneFeatures(tuple(torch.stack(level).float()
                                      for level in zip(*(it.maps for it in items))))


class CachedViews(torch.utils.data.Dataset):
    """Views of a dataset with their backbone features: ``(BackboneFeatures, target)`` items.

    Targets are kept in their compact form (``Target.compact``: segmentation masks as uint8)
    and expanded on access."""

    def __init__(self, maps: Sequence[Tensor], targets: list[Any], source_index: list[int]):
        self.maps = tuple(maps)
        self.targets = targets
        self.source_index = source_index  # which image of the source dataset each view shows

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return BackboneFeatures(tuple(m[i] for m in self.maps)), self.targets[i].expanded()

    def nbytes(self) -> int:
        feats = sum(m.numel() * m.element_size() for m in self.maps)
        return feats + sum(t.nbytes() for t in self.targets)


def save_views(views: CachedViews, path: Path) -> None:
    """Keep a built cache on disk (atomically) for later runs of the same data, views and seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"maps": list(views.maps), "targets": views.targets, "source": views.source_index}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_views(path: Path) -> CachedViews:
    """A cache written by :func:`save_views`.  It holds target objects, so it is unpickled in
    full: only load caches this project wrote on this machine (never a downloaded file)."""
    d = torch.load(path, map_location="cpu", weights_only=False)
    return CachedViews(d["maps"], d["targets"], d["source"])


@torch.no_grad()
def build_cache(backbone: nn.Module, datasets: Sequence[torch.utils.data.Dataset], seed: int,
                batch_size: int = 16, workers: int = 0, dtype: torch.dtype = torch.float16,
                progress: Callable[[int, int], None] | None = None) -> CachedViews:
    """Backbone features of every item of every dataset in ``datasets`` (one dataset per view:
    the same images under different transforms).  View ``v`` draws its augmentation from
    seed ``seed * 1000 + v``, so a cache is the same whenever it is rebuilt."""
    backbone = backbone.eval()
    n_total = sum(len(ds) for ds in datasets)
    maps: list[Tensor] | None = None
    targets: list[Any] = []
    source: list[int] = []
    done = 0
    for v, ds in enumerate(datasets):
        gen = torch.Generator().manual_seed(seed * 1000 + v)
        pos = 0
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + v)  # the main process's transforms (workers = 0)
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                                 collate_fn=list, generator=gen)
            for batch in loader:
                x = torch.stack([b[0] for b in batch]).contiguous(memory_format=torch.channels_last)
                feats = backbone(x)
                if maps is None:
                    maps = [torch.empty((n_total, *f.shape[1:]), dtype=dtype) for f in feats]
                for level, f in zip(maps, feats):
                    level[done:done + len(batch)] = f.to(dtype)
                targets += [b[1].compact() for b in batch]
                source += range(pos, pos + len(batch))
                pos += len(batch)
                done += len(batch)
                if progress is not None:
                    progress(done, n_total)
    if maps is None:
        raise ValueError("no images to cache")
    return CachedViews(maps, targets, source)


def cache_memory_estimate(backbone_channels: Sequence[int], strides: Sequence[int], image_size: int,
                          views: int, bytes_per_value: int = 2) -> int:
    """Bytes the features of ``views`` cached views take (masks not counted)."""
    per_view = sum(c * math.ceil(image_size / s) ** 2 for c, s in zip(backbone_channels, strides))
    return per_view * views * bytes_per_value


class CacheProgress:
    """A one-line progress report for cache building: views done, views per second, ETA."""

    def __init__(self, what: str, log: Callable[[str], None], every: float = 15.0):
        self.what, self.log, self.every = what, log, every
        self.t0 = time.perf_counter()
        self.last = self.t0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        self.log(f"   caching {self.what}: {done}/{total} views, {rate:.1f} views/s, ETA {eta:.0f} s")
