import math

import pytest
import torch
import torch.nn.functional as F

from efficientps_ros.model.config import load_config
from efficientps_ros.model.semantic_head import DPC, LSFE, MC, SemanticHead, semantic_loss

DILATIONS = ((1, 6), (1, 1), (6, 21), (18, 15), (6, 3))


def _record_io(module: torch.nn.Module, store: dict, name: str):
    def hook(_module, inputs, output):
        store[name] = (inputs[0], output)

    return module.register_forward_hook(hook)


def _bilinear(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def test_dpc_branches_have_the_papers_dilations():
    dpc = DPC(8, 4, DILATIONS)
    for conv, dilation in zip(dpc.convs, DILATIONS):
        assert conv.depthwise_conv.conv.dilation == dilation
        assert conv.depthwise_conv.conv.padding == dilation
    assert dpc.conv.conv.in_channels == 5 * 8


def test_dpc_branch_wiring(randomize_norms):
    dpc = DPC(4, 3, DILATIONS)
    randomize_norms(dpc)
    dpc.eval()
    seen = {}
    hooks = [_record_io(conv, seen, f"c{i}") for i, conv in enumerate(dpc.convs)]
    hooks.append(_record_io(dpc.conv, seen, "out"))
    x = torch.randn(1, 4, 40, 48)
    with torch.no_grad():
        dpc(x)
    for hook in hooks:
        hook.remove()
    first = seen["c0"][1]
    assert seen["c0"][0] is x
    assert all(seen[f"c{i}"][0] is first for i in (1, 2, 3))
    assert seen["c4"][0] is seen["c3"][1]
    expected = torch.cat([first] + [seen[f"c{i}"][1] for i in (1, 2, 3, 4)], dim=1)
    torch.testing.assert_close(seen["out"][0], expected)


def test_lsfe_maps_channels_at_the_same_size():
    assert LSFE(8, 4)(torch.randn(1, 8, 6, 10)).shape == (1, 4, 6, 10)


def test_mc_upsamples_its_convs_output_bilinearly_by_two(randomize_norms):
    mc = MC(4, 4)
    randomize_norms(mc)
    mc.eval()
    x = torch.randn(1, 4, 5, 7)
    with torch.no_grad():
        out = mc(x)
        expected = F.interpolate(mc.convs(x), scale_factor=2, mode="bilinear", align_corners=False)
    assert out.shape == (1, 4, 10, 14)
    torch.testing.assert_close(out, expected)


@pytest.fixture(scope="module")
def small_head() -> SemanticHead:
    return SemanticHead(load_config("small")).eval()


def _features(height: int, width: int, channels: int = 64, batch: int = 1) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, height // s, width // s) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize(("height", "width"), [(64, 128), (96, 160)])
def test_logits_come_out_at_the_requested_size(small_head, height, width):
    with torch.no_grad():
        logits = small_head(_features(height, width, batch=2), (height, width))
    assert logits.shape == (2, 19, height, width)


def test_head_wiring_follows_the_authors(randomize_norms):
    head = SemanticHead(load_config("small"))
    randomize_norms(head)
    head.eval()
    seen = {}
    hook = _record_io(head.conv_logits, seen, "logits")
    p4, p8, p16, p32 = _features(64, 96)
    with torch.no_grad():
        out = head([p4, p8, p16, p32], (64, 96))
        hook.remove()
        dpc32 = head.lateral_convs_ss[0](p32)
        dpc16 = head.lateral_convs_ss[1](p16)
        f8 = head.lateral_convs_ls[0](p8) + head.aligning_convs[0](dpc16 + _bilinear(dpc32, dpc16.shape[-2:]))
        f4 = head.lateral_convs_ls[1](p4) + head.aligning_convs[1](f8)
        size = f4.shape[-2:]
        # The /16 part is DPC(P16) alone, without P32 added.
        expected = torch.cat([f4, _bilinear(f8, size), _bilinear(dpc16, size), _bilinear(dpc32, size)], dim=1)
        torch.testing.assert_close(seen["logits"][0], expected)
        torch.testing.assert_close(out, _bilinear(seen["logits"][1], (64, 96)))


def test_b5_head_equals_the_authors(official_shapes, shapes_of):
    head = SemanticHead(load_config("b5_cityscapes"))
    assert shapes_of(head) == official_shapes("semantic_head.")
    assert sum(p.numel() for p in head.parameters()) == 1_206_547


def test_head_refuses_a_wrong_number_of_levels(small_head):
    with pytest.raises(ValueError, match="features"):
        small_head(_features(64, 64)[:3], (64, 64))


def _two_class_logits(margins: list[list[float]]) -> torch.Tensor:
    """Logits whose pixel loss for target 1 is log(1 + exp(margin))."""
    margin = torch.tensor(margins).view(len(margins), 1, 1, -1)
    return torch.cat([margin, torch.zeros_like(margin)], dim=1)


def _pixel_loss(margin: float) -> float:
    return math.log1p(math.exp(margin))


def test_loss_averages_the_worst_quarter_of_each_images_pixels():
    margins = [[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0], [0.5, -0.5, -1.5, -2.5, 5.0, 4.0, -5.0, -6.0]]
    logits = _two_class_logits(margins)
    target = torch.ones(2, 1, 8, dtype=torch.long)
    loss = semantic_loss(logits, target)
    first = (_pixel_loss(3.0) + _pixel_loss(2.0)) / 2
    second = (_pixel_loss(5.0) + _pixel_loss(4.0)) / 2
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_loss_ignores_255_and_rounds_the_kept_count_up():
    logits = _two_class_logits([[9.0, 8.0, 1.0, 0.5, -1.0, -2.0]]).requires_grad_()
    target = torch.tensor([[[255, 255, 1, 1, 1, 1]]])
    loss = semantic_loss(logits, target)
    # 4 labelled pixels: ceil(0.25 * 4) = 1 kept; the two worse pixels are void.
    assert loss.item() == pytest.approx(_pixel_loss(1.0), rel=1e-6)
    loss.backward()
    touched = logits.grad.abs().sum(dim=1).flatten().nonzero().flatten().tolist()
    assert touched == [2]


def test_loss_with_top_k_one_is_the_plain_mean_over_labelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6)
    target = torch.randint(0, 5, (2, 4, 6))
    target[0, 0] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    expected = torch.stack([per_pixel[i][valid[i]].mean() for i in range(2)]).mean()
    torch.testing.assert_close(semantic_loss(logits, target, top_k=1.0), expected)


def test_loss_of_an_unlabelled_batch_is_zero_and_differentiable():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = semantic_loss(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


@pytest.mark.parametrize(
    ("target", "top_k", "match"),
    [
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), 0.25, "target"),
        (torch.full((1, 4, 4), 7), 0.25, "target"),
        (torch.zeros(1, 4, 4, dtype=torch.long), 0.0, "top_k"),
    ],
)
def test_loss_refuses_bad_input_by_name(target, top_k, match):
    with pytest.raises(ValueError, match=match):
        semantic_loss(torch.randn(1, 3, 4, 4), target, top_k=top_k)
