"""mIoU and panoptic quality on hand-made maps."""
import math

import numpy as np
import pytest

from efficientps_ros.metrics import ConfusionMatrix, PanopticQuality

VOID = 255
ROAD, SKY, CAR = 0, 10, 13


def test_miou_skips_void_truth_and_counts_void_predictions_as_misses():
    confusion = ConfusionMatrix(3)
    truth = np.array([[0, 0, 1, VOID], [2, 2, 2, 2]])
    prediction = np.array([[0, 1, 1, 0], [2, 2, VOID, VOID]])
    confusion.update(truth, prediction)
    iou = confusion.iou()
    # class 0: 1 hit, 2 true pixels, 1 predicted (the void-truth pixel is not scored)
    # class 1: 1 hit, 1 true, 2 predicted; class 2: 2 hits, 4 true, 2 predicted
    assert iou.tolist() == [0.5, 0.5, 0.5]
    assert confusion.mean_iou() == 0.5


def test_miou_ignores_classes_never_seen_and_accumulates_images():
    confusion = ConfusionMatrix(4)
    confusion.update(np.array([[0, 0]]), np.array([[0, 0]]))
    confusion.update(np.array([[1, 1]]), np.array([[1, 0]]))
    iou = confusion.iou()
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == 0.5
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert confusion.mean_iou() == pytest.approx((2 / 3 + 0.5) / 2)


def test_miou_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.zeros((2, 2)), np.zeros((2, 3)))


def _pq() -> PanopticQuality:
    return PanopticQuality(num_classes=19, thing_ids=frozenset(range(11, 19)))


def _ground_truth() -> tuple[np.ndarray, np.ndarray]:
    """10x20: sky on top, road below, two 4x5 cars (20 pixels each)."""
    semantic = np.full((10, 20), ROAD, np.uint8)
    semantic[:3] = SKY
    instance = np.zeros((10, 20), np.uint16)
    semantic[4:8, 2:7] = CAR
    instance[4:8, 2:7] = 1
    semantic[4:8, 12:17] = CAR
    instance[4:8, 12:17] = 2
    return semantic, instance


def test_pq_of_a_perfect_prediction_is_one():
    pq = _pq()
    semantic, instance = _ground_truth()
    # Instance ids need not agree, only the segments.
    pq.update(semantic, instance, semantic, np.where(instance > 0, 3 - instance, 0))
    assert pq.summary() == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "pq_things": 1.0, "pq_stuff": 1.0}


def test_pq_matches_above_half_iou_only():
    pq = _pq()
    true_semantic, true_instance = _ground_truth()
    pred_semantic, pred_instance = true_semantic.copy(), true_instance.copy()
    # Car 1 loses a column: IoU 16/20. Car 2 shifts right by 3 columns: IoU 8/32.
    pred_semantic[4:8, 6] = ROAD
    pred_instance[4:8, 6] = 0
    pred_semantic[4:8, 12:15], pred_instance[4:8, 12:15] = ROAD, 0
    pred_semantic[4:8, 17:20], pred_instance[4:8, 17:20] = CAR, 2
    pq.update(true_semantic, true_instance, pred_semantic, pred_instance)
    car = pq.classes[CAR]
    assert (car.tp, car.fp, car.fn) == (1, 1, 1)
    assert car.sq == pytest.approx(0.8) and car.rq == pytest.approx(0.5) and car.pq == pytest.approx(0.4)
    assert pq.classes[SKY].pq == 1.0
    road = pq.classes[ROAD]
    # 100 true road pixels; 16 car pixels became road, 12 road pixels became car.
    assert road.tp == 1 and road.sq == pytest.approx(88 / 116)
    summary = pq.summary()
    assert summary["pq_things"] == pytest.approx(0.4)
    assert summary["pq"] == pytest.approx((0.4 + 1.0 + 88 / 116) / 3)


def test_pq_leaves_void_out_of_the_union_and_of_false_positives():
    pq = _pq()
    true_semantic = np.full((4, 10), ROAD, np.uint8)
    true_semantic[:, 5:] = VOID
    true_instance = np.zeros_like(true_semantic, np.uint16)
    pred_semantic = np.full((4, 10), ROAD, np.uint8)
    pred_semantic[:, 8:] = CAR  # a car predicted entirely on void
    pred_instance = np.zeros_like(pred_semantic, np.uint16)
    pred_instance[:, 8:] = 1
    pq.update(true_semantic, true_instance, pred_semantic, pred_instance)
    assert pq.classes[ROAD].sq == 1.0  # road predicted on void does not lower the IoU
    assert CAR not in pq.classes


def test_pq_treats_thing_pixels_without_instance_as_void():
    pq = _pq()
    semantic = np.full((4, 4), CAR, np.uint8)
    instance = np.zeros((4, 4), np.uint16)
    pq.update(semantic, instance, semantic, instance)
    assert pq.classes == {}
    assert math.isnan(pq.summary()["pq"])


def test_pq_counts_a_missed_stuff_class_and_a_spurious_one():
    pq = _pq()
    truth = np.full((4, 4), ROAD, np.uint8)
    prediction = np.full((4, 4), SKY, np.uint8)
    empty = np.zeros((4, 4), np.uint16)
    pq.update(truth, empty, prediction, empty)
    assert (pq.classes[ROAD].fn, pq.classes[SKY].fp) == (1, 1)
    assert pq.summary()["pq"] == 0.0
