"""Other timm backbones: strides 8/16/32 wired in, and an offline machine warns at once."""
from __future__ import annotations

import pytest
import torch

from avalanche_onehead import backbones, rules
from avalanche_onehead.errors import ModelError
from avalanche_onehead.model import count_parameters, create_model


def test_unreachable_hub_warns_and_uses_random_init(monkeypatch):
    monkeypatch.setattr(backbones, "hub_reachable", lambda *a, **k: False)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = create_model("mobilenetv3_small_100", pretrained=True)
    assert model.weights_source == ""
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out["seg"].shape == (1, 21, 8, 8) and out["det"].shape == (1, 15, 8, 8)
    assert count_parameters(model)["total"] <= rules.PROJECT_PARAM_LIMIT


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


def test_dirac_init_passes_features_through_the_hidden_layers():
    model = create_model(pretrained=False).eval()  # default: no norm, Dirac init
    x = torch.rand(1, 96, 8, 8)  # non-negative, like the neck's ReLU output
    hidden = model.head[:-1](x)
    assert torch.allclose(hidden, x, atol=1e-6)


def test_checkpoints_from_before_the_norm_option_rebuild_with_groupnorm():
    from avalanche_onehead.model import ModelConfig

    legacy = ModelConfig.from_dict({"backbone": "efficientnet_lite0", "neck_channels": 96})
    assert (legacy.norm, legacy.init) == ("gn", "default")
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
