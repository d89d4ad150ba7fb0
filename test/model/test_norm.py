import copy
import math

import pytest
import torch
from torch import nn

from efficientps_ros.model.norm import ConvNormAct, NormAct, SeparableConv, fold_norms


def _one_channel_norm(activation: str = "leaky_relu") -> NormAct:
    norm = NormAct(1, eps=0.1, activation=activation)
    with torch.no_grad():
        norm.weight.fill_(-2.0)
        norm.bias.fill_(0.5)
        norm.running_mean.fill_(1.0)
        norm.running_var.fill_(3.0)
    return norm.eval()


def test_eval_matches_the_inplace_abn_formula_by_hand():
    norm = _one_channel_norm()
    x = torch.tensor([1.0, 5.0, -3.0]).view(1, 1, 3, 1)
    scale = (2.0 + 0.1) / math.sqrt(3.0 + 0.1)  # |weight| + eps, over sqrt(var + eps)
    before_act = [(v - 1.0) * scale + 0.5 for v in (1.0, 5.0, -3.0)]
    expected = [v if v >= 0 else 0.01 * v for v in before_act]
    assert norm(x).flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_negative_weight_differs_from_plain_batch_norm():
    norm = _one_channel_norm(activation="identity")
    plain = nn.BatchNorm2d(1, eps=0.1).eval()
    plain.load_state_dict(norm.state_dict())
    x = torch.tensor([5.0]).view(1, 1, 1, 1)
    assert plain(x).item() == pytest.approx(4 * -2.0 / math.sqrt(3.1) + 0.5, rel=1e-6)
    assert norm(x).item() == pytest.approx(4 * 2.1 / math.sqrt(3.1) + 0.5, rel=1e-6)


def test_identity_activation_passes_negatives_and_leaky_scales_them():
    x = torch.tensor([-3.0]).view(1, 1, 1, 1)
    linear = _one_channel_norm("identity")(x).item()
    leaky = _one_channel_norm("leaky_relu")(x).item()
    assert linear < 0
    assert leaky == pytest.approx(0.01 * linear, rel=1e-6)


def test_training_uses_batch_statistics_and_updates_running_ones():
    torch.manual_seed(0)
    norm = NormAct(2, eps=1e-3, momentum=0.1, activation="identity")
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([-1.5, 0.5]))
        norm.bias.copy_(torch.tensor([0.2, -0.1]))
    x = 3.0 * torch.randn(4, 2, 3, 3) + 1.0
    y = norm.train()(x)

    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    scale = (norm.weight.detach().abs() + 1e-3) / torch.sqrt(var + 1e-3)
    expected = (x - mean.view(1, 2, 1, 1)) * scale.view(1, 2, 1, 1) + norm.bias.detach().view(1, 2, 1, 1)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.running_mean, 0.1 * mean)
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True))
    assert int(norm.num_batches_tracked) == 1


def test_state_dict_has_the_inplace_abn_entries():
    assert list(NormAct(3).state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_unknown_activation_is_refused_by_name():
    with pytest.raises(ValueError, match="activation"):
        NormAct(3, activation="relu")


@pytest.mark.parametrize(
    ("kernel", "dilation", "padding"),
    [(1, 1, (0, 0)), (3, 1, (1, 1)), (3, (2, 3), (2, 3)), (5, 2, (4, 4)), (3, (6, 21), (6, 21))],
)
def test_conv_norm_act_pads_symmetrically_for_its_dilation(kernel, dilation, padding):
    block = ConvNormAct(4, 6, kernel, dilation=dilation)
    assert block.conv.padding == padding
    assert block.conv.bias is None
    assert block(torch.randn(1, 4, 13, 30)).shape == (1, 6, 13, 30)


def test_conv_norm_act_refuses_even_kernels():
    with pytest.raises(ValueError, match="kernel_size"):
        ConvNormAct(4, 4, 2)


def test_separable_conv_names_and_shapes_follow_the_authors():
    conv = SeparableConv(8, 5, 3, dilation=(6, 21))
    shapes = {k: tuple(v.shape) for k, v in conv.state_dict().items()}
    assert shapes["depthwise_conv.conv.weight"] == (8, 1, 3, 3)
    assert shapes["depthwise_conv.bn.weight"] == (8,)
    assert shapes["pointwise_conv.conv.weight"] == (5, 8, 1, 1)
    assert shapes["pointwise_conv.bn.running_var"] == (5,)
    assert conv.depthwise_conv.conv.dilation == (6, 21)
    assert conv.pointwise_conv.conv.dilation == (1, 1)
    assert conv(torch.randn(1, 8, 30, 50)).shape == (1, 5, 30, 50)


def test_fold_equals_unfolded_within_1e_5(randomize_norms):
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvNormAct(3, 8, 3, stride=2),
        SeparableConv(8, 8, 3, dilation=(2, 3)),
        ConvNormAct(8, 4, 1, activation="identity"),
    )
    randomize_norms(model)
    model.eval()
    x = torch.randn(2, 3, 17, 23)
    expected = model(x)
    folded = fold_norms(copy.deepcopy(model))
    torch.testing.assert_close(folded(x), expected, rtol=0, atol=1e-5)

    assert not any(isinstance(m, NormAct) for m in folded.modules())
    assert isinstance(folded[0].bn, nn.LeakyReLU) and isinstance(folded[2].bn, nn.Identity)
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))


def test_fold_keeps_an_existing_conv_bias(randomize_norms):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True), NormAct(4, activation="identity"))
    randomize_norms(model, seed=1)
    with torch.no_grad():
        model[0].bias.normal_()
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    expected = model(x)
    torch.testing.assert_close(fold_norms(model)(x), expected, rtol=0, atol=1e-5)


def test_fold_refuses_a_norm_without_a_conv_before_it():
    model = nn.Sequential(nn.Linear(4, 4), NormAct(4))
    with pytest.raises(ValueError, match="fold_norms"):
        fold_norms(model)
