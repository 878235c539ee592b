"""The cheap post-processing gives the results of the plain one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from avalanche_onehead.detection import first_kept
from avalanche_onehead.tasks.seg import class_map, upsample_logits


def plain_class_map(raw, size):
    return upsample_logits(raw, size).argmax(1)


def smooth_logits(b, c, h, w, seed):
    """Region-like logits (a few blobs per class, some noise), as a trained model gives."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, max(h // 8, 1), max(w // 8, 1), generator=g) * 5
    return F.interpolate(coarse, size=(h, w), mode="bilinear") + 0.2 * torch.randn(b, c, h, w, generator=g)


@pytest.mark.parametrize("shape, size", [((2, 21, 64, 64), (480, 640)), ((1, 21, 64, 64), (375, 500)),
                                          ((1, 21, 64, 64), (512, 512)), ((3, 5, 16, 24), (37, 300)),
                                          ((1, 21, 64, 64), (40, 30)), ((1, 1, 8, 8), (20, 20))])
def test_class_map_equals_upsample_then_argmax(shape, size):
    for seed in range(2):
        raw = smooth_logits(*shape, seed)
        assert torch.equal(class_map(raw, size), plain_class_map(raw, size))


def test_class_map_on_noise_and_same_size():
    raw = torch.randn(2, 21, 16, 16, generator=torch.Generator().manual_seed(0))  # mostly unsettled
    assert torch.equal(class_map(raw, (48, 80)), plain_class_map(raw, (48, 80)))
    assert torch.equal(class_map(raw, (16, 16)), raw.argmax(1))
    flat = torch.zeros(1, 21, 8, 8)
    flat[:, 3] = 1.0  # one class everywhere: no interpolation needed at all
    assert torch.equal(class_map(flat, (30, 50)), torch.full((1, 30, 50), 3))


def _boxes(n, spread, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    return (torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100 + 5], 1),
            torch.rand(n, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("n, spread, k", [(1000, 512, 100), (1000, 60, 100), (1000, 512, 10), (30, 512, 100),
                                          (0, 512, 100)])
def test_first_kept_equals_batched_nms_then_cut(n, spread, k):
    boxes, scores, labels = _boxes(n, spread, n + k)
    assert torch.equal(first_kept(boxes, scores, labels, 0.6, k), batched_nms(boxes, scores, labels, 0.6)[:k])
