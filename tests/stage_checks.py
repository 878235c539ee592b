"""A check shared by the stage-plan tests: what a stage moved, between two stage checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch

from avalanche_onehead.checkpoint import read_checkpoint
from avalanche_onehead.model import create_model


def assert_only_own_rows_moved(before: Path, after: Path, task: str) -> None:
    """Between two stage checkpoints nothing moved but ``task``'s rows of the output layer, and
    those did."""
    old, new = read_checkpoint(before)["state_dict"], read_checkpoint(after)["state_dict"]
    model = create_model(pretrained=False)
    rows, last = model.output_slices()[task], f"head.{len(model.head) - 1}."
    for name, w in old.items():
        if name.startswith(last) and name.endswith(("weight", "bias")):
            own = torch.zeros(w.shape[0], dtype=torch.bool)
            own[rows] = True
            assert torch.equal(w[~own], new[name][~own]) and not torch.equal(w[own], new[name][own]), name
        else:
            assert torch.equal(w, new[name]), name
