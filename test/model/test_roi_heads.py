import math

import pytest
import torch

from efficientps_ros.model.config import RoIConfig
from efficientps_ros.model.roi_heads import (
    BoxHead,
    MaskHead,
    box_losses,
    detect,
    mask_loss,
    mask_targets,
    roi_features,
    roi_levels,
    sample_rois,
)

STRIDES = (4, 8, 16, 32)


def _square(side: float) -> list[float]:
    """A box `side` pixels wide and high, both end pixels included."""
    return [0.0, 0.0, side - 1, side - 1]


def test_levels_follow_box_size_relative_to_finest_scale():
    boxes = torch.tensor([_square(s) for s in (20, 55, 111, 112, 224, 447, 448, 2000)])
    # floor(log2(side / 56)), clamped to 0..3.
    assert roi_levels(boxes, 56.0, 4).tolist() == [0, 0, 0, 1, 2, 2, 3, 3]


def test_a_nan_box_still_gets_a_level():
    # A diverged step's boxes are NaN; they must reach a NaN loss the trainer skips, not an index error.
    boxes = torch.tensor([[0.0, 0.0, math.nan, 10.0], _square(448)])
    assert roi_levels(boxes, 56.0, 4).tolist() == [0, 3]


def test_features_come_from_each_box_level():
    features = [torch.full((1, 2, 1024 // s, 1024 // s), float(level + 1)) for level, s in enumerate(STRIDES)]
    rois = torch.tensor([[0.0, *_square(s)] for s in (55, 112, 224, 448, 1000)])
    pooled = roi_features(features, STRIDES, rois, 7, RoIConfig())
    assert pooled.shape == (5, 2, 7, 7)
    assert pooled[:, 0, 3, 3].tolist() == [1, 2, 3, 4, 4]


def test_roi_align_is_the_unaligned_legacy_one():
    # A ramp f(y, x) = x over P4. Box [8, 8, 35, 35] reads feature columns 2 to
    # (35 + 1) / 4 = 9: seven bins one column wide, whose two samples sit at +0.25
    # and +0.75 of each bin, so bin k averages to 2.5 + k.
    ramp = torch.arange(16.0).expand(1, 1, 16, 16).contiguous()
    features = [ramp] + [torch.zeros(1, 1, 16 // (2**k), 16 // (2**k)) for k in (1, 2, 3)]
    pooled = roi_features(features, STRIDES, torch.tensor([[0.0, 8, 8, 35, 35]]), 7, RoIConfig())
    assert pooled[0, 0, 0].tolist() == pytest.approx([2.5 + k for k in range(7)])
    assert pooled[0, 0].std(dim=0).max() < 1e-6


def test_features_use_the_roi_image():
    # Image 0 is all zeros, image 1 all ones.
    features = [torch.stack([torch.zeros(1, 32 // s, 32 // s), torch.ones(1, 32 // s, 32 // s)]) for s in STRIDES]
    pooled = roi_features(features, STRIDES, torch.tensor([[1.0, 0, 0, 9, 9], [0.0, 0, 0, 9, 9]]), 7, RoIConfig())
    assert pooled[0].min() == 1 and pooled[1].max() == 0


def test_head_shapes():
    box_head = BoxHead(16, 7, 32, 5)
    logits, deltas = box_head(torch.randn(3, 16, 7, 7))
    assert logits.shape == (3, 5) and deltas.shape == (3, 5, 4)
    mask_head = MaskHead(16, 8, 5, eps=1e-5).eval()
    assert mask_head(torch.randn(3, 16, 14, 14)).shape == (3, 5, 28, 28)


def _strong(column: int, value: float = 10.0, classes: int = 4) -> list[float]:
    logits = [0.0] * classes
    logits[column] = value
    return logits


def test_detect_thresholds_nms_within_class_and_caps():
    rois = torch.tensor(
        [
            [0.0, 10, 10, 49, 49],
            [0.0, 12, 10, 51, 49],
            [0.0, 12, 10, 51, 49],
            [0.0, 60, 60, 79, 79],
            [1.0, 0, 0, 300, 300],
        ]
    )
    class_logits = torch.tensor(
        [
            _strong(2, 10.0),
            _strong(2, 9.0),  # same class, overlapping: suppressed
            _strong(3, 8.0),  # other class: kept
            _strong(1, 0.6931),  # softmax 0.4, under the threshold
            _strong(1, 10.0),
        ]
    )
    deltas = torch.zeros(5, 4, 4)
    deltas[0, 2, 0] = 1.0  # its own class moves it 0.1 x 40 px right; other classes' deltas are unused
    deltas[0, 3] = 5.0
    config = RoIConfig(score_threshold=0.5, nms_threshold=0.5, detections_per_image=5)
    (boxes0, scores0, labels0), (boxes1, scores1, labels1) = detect(
        class_logits, deltas, rois, [(100, 100), (100, 120)], config
    )
    assert torch.allclose(boxes0, torch.tensor([[14.0, 10, 53, 49], [12, 10, 51, 49]]))
    assert labels0.tolist() == [1, 2]
    assert scores0[0] > scores0[1] > 0.99
    assert boxes1.tolist() == [[0, 0, 119, 99]] and labels1.tolist() == [0]

    capped = detect(class_logits, deltas, rois, [(100, 100), (100, 120)], RoIConfig(score_threshold=0.5, detections_per_image=1))
    assert capped[0][2].tolist() == [1]


def test_sampled_rois_start_with_ground_truth_positives():
    torch.manual_seed(0)
    gt = torch.tensor([[10.0, 10, 49, 49]])
    proposals = [torch.tensor([[12.0, 10, 51, 49], [200, 200, 220, 220]]), torch.tensor([[0.0, 0, 9, 9]])]
    targets = [
        {"boxes": gt, "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    sampled = sample_rois(proposals, targets, RoIConfig(batch_size_per_image=8, positive_fraction=0.5))
    # Image 0: the ground truth itself and the overlapping proposal (IoU 0.9) are positives.
    assert sampled["positive"].tolist() == [True, True, False, False]
    assert sampled["labels"].tolist() == [3, 3, 0, 0]
    assert sampled["rois"][:, 0].tolist() == [0, 0, 0, 1]
    assert sampled["rois"][2:, 1:].tolist() == [[200, 200, 220, 220], [0, 0, 9, 9]]
    assert sampled["gt_index"].tolist() == [0, 0]
    positives = sorted(sampled["rois"][:2, 1:].tolist())
    assert positives == [[10, 10, 49, 49], [12, 10, 51, 49]]
    own = sampled["rois"][:2, 1].tolist().index(10.0)
    assert sampled["box_targets"][own].tolist() == [0, 0, 0, 0]
    other = 1 - own
    # The proposal's centre is 2 px right of the ground truth's on a 40 px width, stds 0.1.
    assert sampled["box_targets"][other, 0].item() == pytest.approx(-2 / 40 / 0.1)


def test_box_loss_reads_only_the_true_class_deltas():
    labels = torch.tensor([2, 0])
    targets = torch.tensor([[0.5, -0.2, 0.1, 0.3]])
    deltas = torch.randn(2, 4, 4)
    deltas[0, 2] = targets[0]
    logits = torch.randn(2, 4)
    _, loss_box = box_losses(logits, deltas, labels, targets)
    assert loss_box.item() == 0.0
    deltas[0, 2, 0] += 1.0
    _, loss_box = box_losses(logits, deltas, labels, targets)
    # Smooth L1 of 1 with beta 1 is 0.5, averaged over the 2 sampled RoIs.
    assert loss_box.item() == pytest.approx(0.25)


def test_mask_targets_crop_the_box_and_resize():
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[1, 8:24, 8:16] = True  # the left half of the box below
    for box in ([8.0, 8, 23, 23], [8.7, 8.2, 23.9, 23.6]):
        target = mask_targets(masks, torch.tensor([1]), torch.tensor([box]), 28)
        assert target.shape == (1, 28, 28)
        assert (target[0, :, :14] == 1).all() and (target[0, :, 14:] == 0).all()
    assert mask_targets(masks, torch.tensor([0]), torch.tensor([[8.0, 8, 23, 23]]), 28).sum() == 0


def test_mask_loss_reads_the_true_class_channel():
    target = (torch.rand(1, 28, 28) > 0.5).float()
    logits = torch.randn(1, 3, 28, 28) * 5
    logits[0, 2] = 20 * (2 * target[0] - 1)
    assert mask_loss(logits, torch.tensor([2]), target).item() < 1e-6
    assert mask_loss(logits, torch.tensor([1]), target).item() > 0.1


def test_roi_narrower_than_a_feature_pixel_keeps_its_width():
    # Box [8, 8, 8.5, 35] on the ramp f(y, x) = x reads P4 columns 2 to 9.5 / 4 = 2.375: bin k
    # averages 2 + (k + 0.5) * 0.375 / 7. torchvision's unaligned kernel would widen it to 1.
    ramp = torch.arange(16.0).expand(1, 1, 16, 16).contiguous()
    features = [ramp] + [torch.zeros(1, 1, 16 // (2**k), 16 // (2**k)) for k in (1, 2, 3)]
    pooled = roi_features(features, STRIDES, torch.tensor([[0.0, 8, 8, 8.5, 35]]), 7, RoIConfig())
    assert pooled[0, 0, 0].tolist() == pytest.approx([2 + (k + 0.5) * 0.375 / 7 for k in range(7)])


def test_no_rois_give_no_features():
    features = [torch.zeros(1, 2, 64 // s, 64 // s) for s in STRIDES]
    assert roi_features(features, STRIDES, torch.zeros(0, 5), 7, RoIConfig()).shape == (0, 2, 7, 7)
