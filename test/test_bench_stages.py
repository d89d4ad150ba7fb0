import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from efficientps_ros.bench_stages import StageClock, agreement, box_iou, panoptic_differ, rpn_marked, summary
from efficientps_ros.model import build_model, load_config
from efficientps_ros.result import Instance, PanopticResult


def test_the_cpu_clock_gives_each_stage_its_own_time_and_adds_repeats():
    clock = StageClock(torch.device("cpu"))
    clock.start()
    time.sleep(0.02)
    clock.mark("first")
    clock.mark("second")
    time.sleep(0.01)
    clock.mark("first")
    durations = clock.stop()
    assert list(durations) == ["first", "second"]
    assert durations["first"] >= 30.0 and durations["second"] < durations["first"]


def test_summary_is_the_median_and_95th_percentile():
    values = list(range(1, 101))
    assert summary(values) == {"median_ms": 50.5, "p95_ms": pytest.approx(95.05)}


def test_the_rpn_is_marked_once_per_forward_where_the_box_head_starts_and_only_while_asked():
    config = load_config("small")
    model = build_model(config).eval()
    marks = []

    class Recorder:
        def mark(self, stage):
            marks.append(stage)

    images = torch.zeros(2, 3, 64, 64)
    with torch.inference_mode():
        with rpn_marked(model, Recorder()):
            model(images, [(64, 64)] * 2)
        model(images, [(64, 64)] * 2)
    assert marks == ["RPN"]


def _result(semantic, instances, instance=None):
    instance = np.zeros_like(semantic, dtype=np.uint16) if instance is None else instance
    return PanopticResult(semantic, instance, semantic.astype(np.int32) * 1000 + instance, instances)


def test_agreement_counts_pixels_and_matches_detections_by_class_and_overlap():
    car = Instance(1, 13, "car", 0.9, (0.0, 0.0, 10.0, 10.0))
    person = Instance(2, 11, "person", 0.8, (20.0, 0.0, 30.0, 10.0))
    semantic = np.zeros((4, 8), np.uint8)
    reference = _result(semantic, [car, person])
    changed = semantic.copy()
    changed[0, :3] = 5
    moved = replace(car, box=(6.0, 0.0, 16.0, 10.0))  # IoU 4/16 with the reference's car
    relabelled = replace(person, class_id=12)
    assert agreement([reference], [reference]) == {
        "semantic_agreement": 100.0, "panoptic_pixels_differ": 0, "detections_matched": 2,
        "detections": 2, "detections_reference": 2,
    }
    result = agreement([_result(changed, [moved, relabelled])], [reference])
    assert result["semantic_agreement"] == pytest.approx(100 * 29 / 32)
    assert result["panoptic_pixels_differ"] == 3 and result["detections_matched"] == 0
    # One to one: two reference cars cannot both match one detection.
    twice = _result(semantic, [car, replace(car, id=2, score=0.5)])
    assert agreement([_result(semantic, [car])], [twice])["detections_matched"] == 1


def test_instances_that_swapped_ids_differ_nowhere_and_an_unmatched_one_everywhere():
    semantic = np.full((4, 8), 13, np.uint8)
    instance = np.zeros((4, 8), np.uint16)
    instance[:, :4], instance[:, 4:] = 1, 2
    left = Instance(1, 13, "car", 1.0, (0.0, 0.0, 4.0, 4.0))
    right = Instance(2, 13, "car", 1.0, (4.0, 0.0, 8.0, 4.0))
    reference = _result(semantic, [left, right], instance)
    swapped = _result(semantic, [replace(right, id=1), replace(left, id=2)], 3 - instance)
    assert (swapped.panoptic != reference.panoptic).all()
    assert panoptic_differ(swapped, reference) == 0
    assert agreement([swapped], [reference])["panoptic_pixels_differ"] == 0
    # A box that matches nothing keeps its pixels apart even where the ids agree.
    far = _result(semantic, [left, replace(right, box=(40.0, 0.0, 44.0, 4.0))], instance)
    assert panoptic_differ(far, reference) == 16
    one = instance.copy()
    one[0, 0] = 2
    assert panoptic_differ(_result(semantic, [left, right], one), reference) == 1


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
