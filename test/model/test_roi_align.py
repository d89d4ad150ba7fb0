"""The legacy RoIAlign against a loop-by-loop reference of the mmdetection v1 kernel."""
import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from efficientps_ros.model.roi_align import legacy_roi_align, multilevel_legacy_roi_align

f32 = np.float32
STRIDES = (4, 8, 16, 32)
OUTPUT = 7
SAMPLES = 2


def _legacy_reference(features: torch.Tensor, rois: torch.Tensor, spatial_scale: float) -> torch.Tensor:
    """`ROIAlignForwardV1`, one RoI, bin and sample at a time, in float32 operation by operation."""
    channels, height, width = features.shape[1:]
    out = torch.zeros(rois.shape[0], channels, OUTPUT, OUTPUT)
    s = f32(spatial_scale)
    for k, (image, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = f32(x1), f32(y1), f32(x2), f32(y2)
        start_x, start_y = x1 * s, y1 * s
        end_x, end_y = (x2 + f32(1)) * s, (y2 + f32(1)) * s
        bin_w = max(end_x - start_x, f32(0)) / f32(OUTPUT)
        bin_h = max(end_y - start_y, f32(0)) / f32(OUTPUT)
        for ph in range(OUTPUT):
            for pw in range(OUTPUT):
                total = torch.zeros(channels)
                for iy in range(SAMPLES):
                    y = start_y + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(SAMPLES)
                    for ix in range(SAMPLES):
                        x = start_x + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(SAMPLES)
                        total = total + _bilinear(features[int(image)], height, width, y, x)
                out[k, :, ph, pw] = total / f32(SAMPLES * SAMPLES)
    return out


def _bilinear(plane: torch.Tensor, height: int, width: int, y: np.float32, x: np.float32) -> torch.Tensor:
    """The kernel's `bilinear_interpolate`: zero beyond one pixel outside, edges clamped with weight 0."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(plane.shape[0])
    y, x = max(y, f32(0)), max(x, f32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = f32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = f32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - f32(y_low), x - f32(x_low)
    hy, hx = f32(1) - ly, f32(1) - lx
    return (
        float(hy * hx) * plane[:, y_low, x_low]
        + float(hy * lx) * plane[:, y_low, x_high]
        + float(ly * hx) * plane[:, y_high, x_low]
        + float(ly * lx) * plane[:, y_high, x_high]
    )


def _rois(image_size: tuple[int, int], count: int, seed: int) -> torch.Tensor:
    """RoIs `[K, 5]` over two images: inclusive sizes 0 to 64 px, sub-pixel ones and negative ones
    (x2 < x1 - 1), some across the image border and some wholly outside it."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    sizes = torch.cat([
        torch.rand(count, 2, generator=generator) * 64,  # 0 to 64 px
        torch.rand(count, 2, generator=generator) * 4,  # under a feature pixel at most levels
        torch.rand(count, 2, generator=generator) * 2 - 3,  # x2 < x1: the kernel clamps to 0
        torch.tensor([[0.0, 0.0], [64.0, 0.0], [0.0, 64.0], [1.0, 1.0]]).repeat(count // 4, 1),
    ])
    total = sizes.shape[0]
    # Starts from 80 px before the image to 80 px past it.
    starts = torch.rand(total, 2, generator=generator) * torch.tensor([width + 160.0, height + 160.0]) - 80
    ends = starts + sizes - 1  # the legacy size of a box is x2 + 1 - x1
    images = torch.randint(0, 2, (total, 1), generator=generator).float()
    return torch.cat([images, starts, ends], dim=1)


@pytest.mark.parametrize("stride", STRIDES)
def test_every_size_and_position_matches_the_legacy_kernel(stride):
    image_size = (160, 224)
    generator = torch.Generator().manual_seed(stride)
    features = torch.randn(2, 3, image_size[0] // stride, image_size[1] // stride, generator=generator)
    rois = _rois(image_size, 40, seed=stride)
    x, y = (rois[:, 1] + rois[:, 3]) / 2, (rois[:, 2] + rois[:, 4]) / 2
    outside = (x < 0) | (x > image_size[1]) | (y < 0) | (y > image_size[0])
    assert outside.sum() > 10 and (rois[:, 3] - rois[:, 1] + 1 < stride).sum() > 40

    ours = legacy_roi_align(features, rois, OUTPUT, 1.0 / stride, SAMPLES)
    expected = _legacy_reference(features, rois, 1.0 / stride)
    assert (ours - expected).abs().max() <= 1e-5
    # Wholly outside, by more than a feature pixel: nothing is read.
    far = (rois[:, 3] + 1 < -stride) | (rois[:, 1] > image_size[1] + stride)
    assert far.any() and (ours[far] == 0).all()


@pytest.mark.parametrize("stride", STRIDES)
def test_large_coordinates(stride):
    # A 1024x2048 image, RoIs ending just under the powers of two where the shift may round.
    image_size = (1024, 2048)
    generator = torch.Generator().manual_seed(100 + stride)
    features = torch.randn(1, 2, image_size[0] // stride, image_size[1] // stride, generator=generator)
    count = 60
    below = 20 * torch.rand(2, count, generator=generator)
    x1 = torch.cat([2048 - below[0], 1024 - below[1]])
    y1 = 1000 * torch.rand(2 * count, generator=generator)
    sizes = 8 * stride * torch.rand(2 * count, 2, generator=generator)
    rois = torch.stack([torch.zeros(2 * count), x1, y1, x1 + sizes[:, 0] - 1, y1 + sizes[:, 1] - 1], dim=1)

    ours = legacy_roi_align(features, rois, OUTPUT, 1.0 / stride, SAMPLES)
    error = (ours - _legacy_reference(features, rois, 1.0 / stride)).abs().flatten(1).amax(dim=1)
    wide = (sizes >= stride).all(dim=1)
    assert wide.sum() > 20 and (~wide).sum() > 20
    # At least a feature pixel wide and high: bit for bit.
    assert (error[wide] == 0).all()
    # Narrower ones are off only by the shift's rounding, <= 3e-5 of a pixel, on features of unit scale.
    assert error[~wide].max() <= 1e-4


def test_torchvision_unaligned_differs_only_under_one_feature_pixel():
    features = torch.randn(2, 2, 40, 56, generator=torch.Generator().manual_seed(1))
    rois = _rois((160, 224), 40, seed=1)
    ends_plus_one = rois + torch.tensor([0.0, 0, 0, 1, 1])
    plain = roi_align(features, ends_plus_one, OUTPUT, 0.25, SAMPLES, aligned=False)
    ours = legacy_roi_align(features, rois, OUTPUT, 0.25, SAMPLES)
    narrow = ((ends_plus_one[:, 3:] - rois[:, 1:3]) * 0.25 < 1).any(dim=1)
    differs = (plain - ours).abs().flatten(1).amax(dim=1) > 1e-5
    assert differs.any() and not (differs & ~narrow).any()


def test_gradients_reach_the_features_of_narrow_and_wide_rois():
    rois = torch.tensor([[0.0, 8.0, 8.0, 9.0, 30.0], [0.0, 20.0, 20.0, 50.0, 50.0]])
    grads = []
    for k in range(2):
        features = torch.randn(1, 2, 16, 16, requires_grad=True)
        legacy_roi_align(features, rois, OUTPUT, 0.25, SAMPLES)[k].sum().backward()
        grads.append(features.grad)
    # The sub-pixel-wide RoI reads columns 2 and 3 only (x from 2 to 2.5).
    assert grads[0][..., 2:4].abs().sum() > 0 and grads[0][..., 4:].abs().sum() == 0
    assert grads[1][..., 5:13, 5:13].abs().sum() > 0 and grads[1][..., :5, :].abs().sum() == 0


def test_no_rois():
    assert legacy_roi_align(torch.randn(1, 2, 8, 8), torch.zeros(0, 5), OUTPUT, 0.25, SAMPLES).shape == (0, 2, 7, 7)


def test_a_non_finite_roi_gets_nan_features_and_the_others_theirs():
    features = torch.randn(1, 2, 16, 16)
    good = torch.tensor([[0.0, 8.0, 8.0, 9.0, 30.0], [0.0, 20.0, 20.0, 50.0, 50.0]])
    broken = torch.tensor([[0.0, float("nan"), 4.0, 9.0, 9.0], [0.0, 0.0, 0.0, float("inf"), 9.0]])
    pooled = legacy_roi_align(features, torch.cat([good[:1], broken, good[1:]]), OUTPUT, 0.25, SAMPLES)
    assert pooled[1:3].isnan().all()
    assert torch.equal(pooled[[0, 3]], legacy_roi_align(features, good, OUTPUT, 0.25, SAMPLES))


def test_each_roi_is_read_from_its_own_level_in_the_rois_order():
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 3, 160 // s, 224 // s, generator=generator) for s in STRIDES]
    scales = [1.0 / s for s in STRIDES]
    rois = _rois((160, 224), 20, seed=3)
    levels = torch.randint(0, 4, (rois.shape[0],), generator=generator)
    pooled = multilevel_legacy_roi_align(features, scales, rois, levels, OUTPUT, SAMPLES)
    for level in range(4):
        mine = levels == level
        expected = legacy_roi_align(features[level], rois[mine], OUTPUT, scales[level], SAMPLES)
        assert torch.equal(pooled[mine], expected)
