import pytest
import torch

from efficientps_ros.model.fpn import TwoWayFPN
from efficientps_ros.model.norm import ConvNormAct


def _make_identity(block: ConvNormAct) -> None:
    """Set a 1-channel conv + norm to pass its input through unchanged (for positive inputs)."""
    with torch.no_grad():
        block.conv.weight.zero_()
        k_h, k_w = block.conv.weight.shape[-2:]
        block.conv.weight[0, 0, k_h // 2, k_w // 2] = 1.0
        norm = block.bn
        # (x - 0) / sqrt(var + eps) * (|w| + eps) + 0 == x
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        norm.weight.fill_(1.0 - norm.eps)
        norm.bias.zero_()


@pytest.fixture
def identity_fpn() -> TwoWayFPN:
    fpn = TwoWayFPN([1, 1, 1, 1], 1)
    for block in fpn.modules():
        if isinstance(block, ConvNormAct):
            _make_identity(block)
    return fpn.eval()


def _levels(size: int = 16) -> list[torch.Tensor]:
    return [torch.zeros(1, 1, size // s, size // s) for s in (1, 2, 4, 8)]


def test_bottom_up_path_carries_c4_to_p32_by_picking_even_pixels(identity_fpn):
    features = _levels()
    features[0] = torch.rand(1, 1, 16, 16) + 0.1
    with torch.no_grad():
        p4, p8, p16, p32 = identity_fpn(features)
    c4 = features[0]
    # Only the bottom-up path starts at C4; the top-down path adds nothing to coarser levels.
    torch.testing.assert_close(p32, c4[..., ::8, ::8])
    torch.testing.assert_close(p16, c4[..., ::4, ::4])
    torch.testing.assert_close(p8, c4[..., ::2, ::2])
    torch.testing.assert_close(p4, 2 * c4)  # its own lateral in both paths


def test_top_down_path_carries_c32_to_p4_by_repeating_pixels(identity_fpn):
    features = _levels()
    features[3] = torch.rand(1, 1, 2, 2) + 0.1
    with torch.no_grad():
        p4, p8, p16, p32 = identity_fpn(features)
    c32 = features[3]
    torch.testing.assert_close(p4, c32.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3))
    torch.testing.assert_close(p16, c32.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(p32, 2 * c32)


def test_paths_accumulate_level_by_level(identity_fpn):
    features = [torch.rand(1, 1, 16 // s, 16 // s) + 0.1 for s in (1, 2, 4, 8)]
    c4, c8, c16, c32 = features
    with torch.no_grad():
        p16 = identity_fpn(features)[2]
    top = c16 + c32.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    bottom = c16 + (c8 + c4[..., ::2, ::2])[..., ::2, ::2]
    torch.testing.assert_close(p16, top + bottom)


def test_sizes_follow_the_inputs_for_odd_level_sizes():
    fpn = TwoWayFPN([3, 5, 7, 9], 8).eval()
    features = [torch.randn(1, c, h, w) for c, (h, w) in zip([3, 5, 7, 9], [(24, 40), (12, 20), (6, 10), (3, 5)])]
    with torch.no_grad():
        outputs = fpn(features)
    assert [tuple(o.shape) for o in outputs] == [(1, 8, 24, 40), (1, 8, 12, 20), (1, 8, 6, 10), (1, 8, 3, 5)]


def test_b5_neck_equals_the_authors(official_shapes, shapes_of):
    fpn = TwoWayFPN([40, 64, 176, 2048], 256, eps=1e-5)
    assert shapes_of(fpn) == official_shapes("neck.")
    assert sum(p.numel() for p in fpn.parameters()) == 3_557_376
    assert {m.bn.eps for m in fpn.modules() if isinstance(m, ConvNormAct)} == {1e-5}


def test_wrong_number_of_levels_is_refused():
    fpn = TwoWayFPN([3, 5, 7, 9], 8)
    with pytest.raises(ValueError, match="features"):
        fpn([torch.randn(1, 3, 8, 8)])
