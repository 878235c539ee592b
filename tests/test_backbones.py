"""Other timm backbones: strides 8/16/32 wired in, and an offline machine warns at once."""
from __future__ import annotations

import pytest
import torch

from avalanche_onehead import backbones
from avalanche_onehead.errors import ModelError
from avalanche_onehead.model import count_parameters, create_model


def test_unreachable_hub_warns_and_uses_random_init(monkeypatch):
    monkeypatch.setattr(backbones, "hub_reachable", lambda *a, **k: False)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = create_model("mobilenetv3_small_100", pretrained=True)
    assert model.weights_source == ""
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out["seg"].shape == (1, 21, 8, 8) and out["det"].shape == (1, 15, 8, 8)
    assert count_parameters(model)["total"] < 5_000_000


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises((ModelError, RuntimeError), match="not_a_model"):
        create_model("not_a_model", pretrained=False)


@pytest.mark.parametrize("norm", ["gn", "bn", "none"])
def test_neck_and_head_normalisation_options(norm):
    model = create_model(pretrained=False, norm=norm).eval()
    out = model(torch.zeros(2, 3, 64, 64))
    assert out["cls"].shape == (2, 10) and out["seg"].shape == (2, 21, 8, 8)
    kinds = {type(m[1]).__name__ for m in list(model.head)[:-1]}
    assert kinds == {"gn": {"GroupNorm"}, "bn": {"BatchNorm2d"}, "none": {"Identity"}}[norm]


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="norm must be one of"):
        create_model(pretrained=False, norm="layer")
