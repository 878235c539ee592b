"""Pretrained-feature anchor: keep the image-level summary of the neck features near the one the
untrained head computes from the ImageNet backbone, in every stage.

Why: the classification read-out is the spatial mean of the last head layer, so what the last
stage can learn is bounded by how much of the backbone's semantics the globally pooled features
still hold after segmentation and detection have reshaped the shared layers (a linear probe of
them falls from about 0.9 before training to 0.68 after the segmentation stage).  Pulling the
pooled neck features of the current task's own images towards those of the model as it was
built (Dirac-initialised neck, so a linear view of the backbone) keeps that summary, while the
per-pixel features stay free to serve the dense tasks.  It is DELTA-style feature
regularisation towards the pretrained model (Li et al., ICLR 2019), pooled; it uses only the
current stage's images.

:func:`pooled_anchor_loss` is the algorithm, :class:`PretrainedAnchor` its thin plugin.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor

from .regularization import frozen_copy


def pooled_anchor_loss(student: Tensor, anchor: Tensor) -> Tensor:
    """Mean squared distance between the spatially averaged (B, C, h, w) feature maps."""
    return F.mse_loss(student.mean((2, 3)), anchor.mean((2, 3)))


class PretrainedAnchor(SupervisedPlugin):
    """Adds ``weight * pooled_anchor_loss(neck features, the initial model's neck features)``.

    The initial model is a frozen copy taken before the first experience; its weights are part
    of the resume state, so a resumed or forked run anchors to the same model."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.initial: torch.nn.Module | None = None
        self._initial_state: dict[str, Tensor] | None = None
        self.active = True  # False: a stage whose plan leaves the anchor out
        self.last = 0.0  # latest penalty, for inspection

    def before_training_exp(self, strategy, **kwargs):
        if self.initial is None:
            self.initial = frozen_copy(strategy.model)
            if self._initial_state is not None:  # restored: the weights the run started from
                self.initial.load_state_dict(self._initial_state)
                self._initial_state = None

    def before_backward(self, strategy, **kwargs):
        if self.initial is None or self.weight == 0 or not self.active:
            return
        with torch.no_grad():
            anchor = self.initial(strategy.mb_x).features
        penalty = pooled_anchor_loss(strategy.mb_output.features, anchor)
        self.last = float(penalty.detach())
        strategy.loss = strategy.loss + self.weight * penalty

    def resume_state(self) -> dict[str, Any]:
        state = self.initial.state_dict() if self.initial is not None else self._initial_state
        return {"initial": {k: v.detach().cpu().clone() for k, v in state.items()} if state else None}

    def restore(self, state: dict[str, Any], strategy, finished) -> None:
        self.initial = None
        self._initial_state = state.get("initial")
        if self._initial_state is None and finished:
            raise ValueError("the anchor remedy needs the weights the run started from, and this run's "
                             "saved state has none (it was trained without 'anchor'); start a new run")
