import pytest
import torch

from efficientps_ros.model.config import RPNConfig
from efficientps_ros.model.rpn import RPNHead, base_anchors, grid_anchors, propose, rpn_loss


def test_base_anchors_of_stride_4_follow_mmdetection_v1():
    # Base size 4, scale 8: side 32 for ratio 1; 32*sqrt(2) wide and 32/sqrt(2) high for
    # ratio 0.5. Centre (4 - 1) / 2 = 1.5, corners at 1.5 -+ (side - 1) / 2, rounded:
    # ratio 0.5 -> x 1.5 -+ 22.13, y 1.5 -+ 10.81; ratio 1 -> 1.5 -+ 15.5.
    anchors = base_anchors(4, 8.0, (0.5, 1.0, 2.0))
    expected = [[-21, -9, 24, 12], [-14, -14, 17, 17], [-9, -21, 12, 24]]
    assert anchors.tolist() == expected


def test_base_anchors_of_stride_16():
    # Centre 7.5; ratio 1 -> side 128: 7.5 -+ 63.5.
    assert base_anchors(16, 8.0, (1.0,)).tolist() == [[-56, -56, 71, 71]]


def test_grid_anchors_are_ordered_row_column_anchor():
    base = base_anchors(8, 8.0, (0.5, 1.0, 2.0))
    anchors = grid_anchors(base, 8, (2, 3))
    assert anchors.shape == (2 * 3 * 3, 4)
    for y in range(2):
        for x in range(3):
            for a in range(3):
                shift = torch.tensor([x * 8, y * 8, x * 8, y * 8], dtype=torch.float32)
                assert torch.equal(anchors[(y * 3 + x) * 3 + a], base[a] + shift)


def test_head_outputs_follow_the_anchor_order():
    torch.manual_seed(0)
    head = RPNHead(8, 3)
    feature = torch.randn(2, 8, 4, 5)
    with torch.no_grad():
        (objectness,), (deltas,) = head([feature])
    with torch.no_grad():
        hidden = torch.relu(head.rpn_conv(feature))
        cls, reg = head.rpn_cls(hidden), head.rpn_reg(hidden)
    assert objectness.shape == (2, 4 * 5 * 3) and deltas.shape == (2, 4 * 5 * 3, 4)
    b, y, x, a = 1, 2, 3, 2
    index = (y * 5 + x) * 3 + a
    assert objectness[b, index] == pytest.approx(cls[b, a, y, x].item())
    assert deltas[b, index].tolist() == pytest.approx(reg[b, a * 4 : a * 4 + 4, y, x].tolist())


def _two_level_scene():
    level0 = torch.tensor([[0.0, 0, 9, 9], [1, 0, 10, 9], [50, 50, 59, 59]])
    level1 = torch.tensor([[0.0, 0, 9, 9], [100, 100, 300, 300]])
    objectness = [torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[2.5, 0.5]])]
    deltas = [torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)]
    return objectness, deltas, [level0, level1]


def test_proposals_take_top_per_level_nms_per_level_then_best_overall():
    objectness, deltas, anchors = _two_level_scene()
    config = RPNConfig(nms_threshold=0.7)
    (proposals,) = propose(objectness, deltas, anchors, [(120, 200)], 2, 10, config)
    # Level 0: the two best anchors overlap (IoU 0.82), one survives; the third was
    # past the top 2. Level 1 repeats the best box, which its own NMS keeps, and its
    # large box is clipped to the 120x200 image.
    assert proposals.tolist() == [[0, 0, 9, 9], [0, 0, 9, 9], [100, 100, 199, 119]]
    (capped,) = propose(objectness, deltas, anchors, [(120, 200)], 2, 2, config)
    assert capped.tolist() == [[0, 0, 9, 9], [0, 0, 9, 9]]


def test_proposals_are_clipped_to_each_image():
    objectness, deltas, anchors = _two_level_scene()
    objectness = [o.repeat(2, 1) for o in objectness]
    deltas = [d.repeat(2, 1, 1) for d in deltas]
    first, second = propose(objectness, deltas, anchors, [(120, 200), (64, 80)], 3, 10, RPNConfig())
    assert first.max() == 199 and (first[:, 1::2] <= 119).all()
    assert (second[:, 0::2] <= 79).all() and (second[:, 1::2] <= 63).all()


def _single_anchor_scene():
    """8x8 anchors every 4 pixels over a 64x64 image; the ground truth is anchor (y=4, x=4)."""
    anchors = grid_anchors(base_anchors(4, 2.0, (1.0,)), 4, (16, 16))
    target = 4 * 16 + 4
    gt = anchors[target : target + 1].clone()
    objectness = torch.full((1, anchors.shape[0]), -20.0)
    objectness[0, target] = 20.0
    return anchors, target, gt, objectness


def test_rpn_loss_vanishes_for_a_perfect_prediction():
    torch.manual_seed(0)
    anchors, target, gt, objectness = _single_anchor_scene()
    deltas = torch.zeros(1, anchors.shape[0], 4)
    deltas[0, 0] = 5.0  # a negative anchor: its deltas are not regressed
    loss_cls, loss_reg = rpn_loss([objectness], [deltas], [anchors], [(64, 64)], [gt], RPNConfig())
    assert loss_cls.item() < 1e-6 and loss_reg.item() == 0.0


def test_rpn_loss_penalises_the_positive_anchor():
    torch.manual_seed(0)
    anchors, target, gt, objectness = _single_anchor_scene()
    deltas = torch.zeros(1, anchors.shape[0], 4)
    deltas[0, target, 0] = 1.0
    objectness[0, target] = -20.0
    loss_cls, loss_reg = rpn_loss([objectness], [deltas], [anchors], [(64, 64)], [gt], RPNConfig())
    # One positive among the sampled: 20 nats and a smooth-L1 of 1 - beta / 2, over the same count.
    assert loss_cls.item() / loss_reg.item() == pytest.approx(20.0 / (1.0 - 0.5 / 9.0), rel=1e-4)


def test_rpn_loss_without_ground_truth_has_only_negatives():
    torch.manual_seed(0)
    anchors, _, _, objectness = _single_anchor_scene()
    deltas = torch.randn(1, anchors.shape[0], 4, requires_grad=True)
    loss_cls, loss_reg = rpn_loss([objectness], [deltas], [anchors], [(64, 64)], [torch.zeros(0, 4)], RPNConfig())
    assert loss_reg.item() == 0.0
    # The 14x14 anchors wholly inside the image are all negatives, fewer than 256, so all
    # are sampled; only the one at +20 is wrong, by 20 nats.
    assert loss_cls.item() == pytest.approx(20.0 / (14 * 14), rel=1e-5)
