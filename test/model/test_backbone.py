import copy
import dataclasses
import re
import socket

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from efficientps_ros.model.backbone import Backbone, DepthwiseSeparableBlock, InvertedResidualBlock
from efficientps_ros.model.config import BackboneConfig, load_config
from efficientps_ros.model.norm import NormAct, fold_norms

B5_STAGES = {  # blocks, output channels, depthwise kernel; from the authors' model
    "blocks": (3, 5, 5, 7, 7, 9, 3),
    "channels": (24, 40, 64, 128, 176, 304, 512),
    "kernels": (3, 3, 5, 3, 5, 5, 3),
}


@pytest.fixture(scope="module")
def b0() -> Backbone:
    return Backbone(load_config("small").backbone).eval()


@pytest.fixture(scope="module")
def b5() -> Backbone:
    return Backbone(load_config("b5_cityscapes").backbone)


@pytest.mark.parametrize(("height", "width"), [(64, 96), (96, 160)])
def test_b0_taps_have_strides_4_to_32(b0, height, width):
    with torch.no_grad():
        features = b0(torch.randn(1, 3, height, width))
    shapes = [tuple(f.shape) for f in features]
    channels = [24, 40, 112, 1280]
    assert shapes == [(1, c, height // s, width // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert b0.out_channels == channels
    assert b0.strides == [4, 8, 16, 32]


def test_b5_state_dict_equals_the_authors_backbone(b5, official_shapes, shapes_of):
    assert shapes_of(b5) == official_shapes("backbone.")
    assert b5.out_channels == [40, 64, 176, 2048]


def test_b5_parameter_count_equals_the_authors(b5):
    assert sum(p.numel() for p in b5.parameters()) == 23_148_912


def test_b5_stages_match_the_authors_layout(b5):
    assert tuple(len(stage) for stage in b5.blocks) == B5_STAGES["blocks"]
    assert tuple(stage[-1].out_channels for stage in b5.blocks) == B5_STAGES["channels"]
    assert tuple(stage[0].conv_dw.kernel_size[0] for stage in b5.blocks) == B5_STAGES["kernels"]


def test_b5_norms_have_the_authors_eps_and_activations(b5):
    norms = [m for m in b5.modules() if isinstance(m, NormAct)]
    assert len(norms) == 116
    assert all(n.eps == 1e-3 and n.slope == 0.01 for n in norms)
    assert b5.bn1.activation == "leaky_relu" and b5.bn2.activation == "leaky_relu"
    for stage_index, stage in enumerate(b5.blocks):
        for block in stage:
            if stage_index == 0:
                assert isinstance(block, DepthwiseSeparableBlock)
                assert (block.bn1.activation, block.bn2.activation) == ("leaky_relu", "leaky_relu")
            else:
                assert isinstance(block, InvertedResidualBlock)
                assert block.bn1.activation == "identity"
                assert isinstance(block.act1, nn.LeakyReLU) and block.act1.negative_slope == 0.01
                assert (block.bn2.activation, block.bn3.activation) == ("leaky_relu", "identity")


def test_no_squeeze_and_excitation(b5):
    assert not any("se" in name.split(".") or "SqueezeExcite" in type(m).__name__ for name, m in b5.named_modules())


def test_inverted_residual_applies_the_separate_leaky_relu_after_bn1(b0, randomize_norms):
    block = copy.deepcopy(b0.blocks[1][1])
    randomize_norms(block)
    assert block.has_skip
    x = torch.randn(1, block.conv_pw.in_channels, 8, 8)
    with torch.no_grad():
        expanded = F.leaky_relu(block.bn1(block.conv_pw(x)), 0.01)
        expected = block.bn3(block.conv_pwl(block.bn2(block.conv_dw(expanded)))) + x
        torch.testing.assert_close(block(x), expected)


def test_stride_2_convs_pad_tf_style_on_the_right_and_bottom(b0):
    x = torch.randn(1, 3, 32, 48)
    weight = b0.conv_stem.weight
    with torch.no_grad():
        expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), weight, stride=2)
        torch.testing.assert_close(b0.conv_stem(x), expected)


def test_drop_path_rate_reaches_the_blocks():
    config = dataclasses.replace(load_config("small").backbone, drop_path_rate=0.2)
    rates = [block.drop_path.drop_prob for stage in Backbone(config).blocks for block in stage[1:]]
    assert rates and all(0.0 < r < 0.2 for r in rates)


def test_fold_norms_reaches_inside_the_backbone(b0, randomize_norms):
    model = copy.deepcopy(b0).double()
    randomize_norms(model)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        folded = fold_norms(model)(x)
    assert not any(isinstance(m, NormAct) for m in model.modules())
    for got, want in zip(folded, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "no_such_model",
        "resnet18",
        "tf_efficientnetv2_s",
        "hf-hub:timm/efficientnet_b0.ra_in1k",
        "hf_hub:timm/efficientnet_b0",
        "timm/efficientnet_b0",
        "efficientnet_b0.ra_in1k",
        "tf_efficientnet_b9",
        "efficientnet_b0 ",
    ],
)
def test_anything_but_a_plain_efficientnet_name_is_refused_before_timm_is_called(name, monkeypatch):
    calls = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ValueError, match=re.escape(f"backbone.name: {name!r} is not allowed; allowed: efficientnet_b0")):
        Backbone(BackboneConfig(name=name))
    assert calls == []


def test_every_allowed_name_builds_with_nothing_fetched(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"the build tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_network)
    for name in ("efficientnet_b0", "tf_efficientnet_b3"):
        with torch.device("meta"):
            backbone = Backbone(BackboneConfig(name=name))
        assert backbone.strides == [4, 8, 16, 32]


def test_taps_at_wrong_strides_are_refused():
    with pytest.raises(ValueError, match="backbone.tap_stages"):
        Backbone(BackboneConfig(name="tf_efficientnet_b0", tap_stages=(0, 2, 4)))
