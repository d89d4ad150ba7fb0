import pytest
import torch

from efficientps_ros.model.boxes import (
    IGNORED,
    MAX_LOG_SCALE,
    NEGATIVE,
    assign_boxes,
    box_iou_inclusive,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms_inclusive,
    sample_boxes,
    segment_boxes,
)

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=generator) * 200
    side = 1 + torch.rand(n, 2, generator=generator) * 150
    return torch.cat([corner, corner + side], dim=1)


def test_iou_counts_both_end_pixels():
    # 10x10 pixels each, sharing columns 5..9: 50 of 150 pixels.
    iou = box_iou_inclusive(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[5.0, 0, 14, 9]]))
    assert iou.item() == pytest.approx(1 / 3)


def test_nms_suppresses_by_inclusive_iou_within_groups_only():
    # Inclusive IoU 70/130 > 0.5; measured as x2 - x1 it would be exactly 0.5 and survive.
    boxes = torch.tensor([[0.0, 0, 9, 9], [3, 0, 12, 9], [3, 0, 12, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = nms_inclusive(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]


def test_encode_decode_round_trip():
    reference, target = _random_boxes(50, 0), _random_boxes(50, 1)
    for stds in [(1.0, 1.0, 1.0, 1.0), RCNN_STDS]:
        deltas = encode_boxes(reference, target, stds)
        assert torch.allclose(decode_boxes(reference, deltas, stds), target, atol=1e-3)


def test_decode_follows_mmdetection_v1():
    # The worked example of mmdetection v1's delta2bbox: centre (x1 + x2) / 2,
    # width x2 - x1 + 1, corners at centre -+ (width / 2 - 0.5), clipped to 32x32.
    rois = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]])
    deltas = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]])
    expected = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [0.2817, 0.2817, 4.7183, 4.7183], [0.0, 0.6321, 7.3891, 0.3679], [5.8967, 2.9251, 5.5033, 3.2749]]
    )
    assert torch.allclose(decode_boxes(rois, deltas, (1.0, 1.0, 1.0, 1.0), (32, 32)), expected, atol=1e-4)


def test_decode_scales_deltas_by_stds_and_clamps_growth():
    reference = torch.tensor([[0.0, 0, 9, 9]])
    # dx = 1 * 0.1 of a 10-pixel width: one pixel to the right.
    moved = decode_boxes(reference, torch.tensor([[1.0, 0, 0, 0]]), RCNN_STDS)
    assert torch.allclose(moved, torch.tensor([[1.0, 0, 10, 9]]))
    huge = decode_boxes(reference, torch.tensor([[0.0, 0, 100, 0]]), (1.0, 1.0, 1.0, 1.0))
    width = huge[0, 2] - huge[0, 0] + 1
    assert width.item() == pytest.approx(10 * torch.exp(torch.tensor(MAX_LOG_SCALE)).item(), rel=1e-4)


def test_clip_keeps_corners_on_pixels_of_each_image():
    boxes = torch.tensor([[[-5.0, -3, 120, 70]], [[-5.0, -3, 120, 70]]])
    sizes = torch.tensor([[[50.0, 100.0]], [[64.0, 64.0]]])
    clipped = clip_boxes(boxes, sizes)
    assert clipped[0, 0].tolist() == [0, 0, 99, 49]
    assert clipped[1, 0].tolist() == [0, 0, 63, 63]
    assert clip_boxes(torch.tensor([[-1.0, 2, 300, 40]]), (30, 200)).tolist() == [[0, 2, 199, 29]]


def test_assignment_thresholds_and_low_quality_claims():
    iou = torch.tensor(
        [
            # box: 0    1     2    3    4     5
            [0.80, 0.50, 0.20, 0.0, 0.10, 0.10],
            [0.10, 0.10, 0.10, 0.0, 0.35, 0.25],
            [0.10, 0.10, 0.10, 0.0, 0.35, 0.05],
        ]
    )
    assigned = assign_boxes(iou, positive_iou=0.7, negative_iou=0.3, min_positive_iou=0.3)
    # Box 0 is positive; 1 lies between the thresholds; 2, 3 and 5 are negatives.
    # gts 1 and 2 both overlap box 4 best (0.35 >= 0.3) and claim it; the later one wins.
    assert assigned.tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, 2, NEGATIVE]

    weak = assign_boxes(torch.tensor([[0.2, 0.1]]), 0.7, 0.3, min_positive_iou=0.3)
    assert weak.tolist() == [NEGATIVE, NEGATIVE]


def test_assignment_without_ground_truth_is_all_negative():
    assert assign_boxes(torch.zeros(0, 4), 0.7, 0.3, 0.3).tolist() == [NEGATIVE] * 4


def test_sampling_respects_budget_and_sets():
    torch.manual_seed(0)
    assigned = torch.full((200,), IGNORED)
    assigned[:10] = 3
    assigned[10:110] = NEGATIVE
    (positives,), (negatives,) = sample_boxes([assigned], batch_size_per_image=16, positive_fraction=0.25)
    assert positives.numel() == 4 and negatives.numel() == 12
    assert (assigned[positives] >= 0).all() and (assigned[negatives] == NEGATIVE).all()

    few = torch.full((50,), NEGATIVE)
    few[0] = 1
    (positives,), (negatives,) = sample_boxes([few], batch_size_per_image=16, positive_fraction=0.5)
    assert positives.tolist() == [0] and negatives.numel() == 15


def test_segment_boxes_enclose_each_id():
    instance = torch.zeros(6, 8, dtype=torch.long)
    instance[1:3, 2:5] = 1
    instance[5, 7] = 2
    boxes = segment_boxes(instance, 2)
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 5, 8, 6]]
