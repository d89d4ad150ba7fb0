"""mIoU and panoptic quality on hand-made maps, and against cityscapesscripts."""
import json
import math

import numpy as np
import pytest

from efficientps_ros.data.cityscapes_layout import (
    INSTANCE_FACTOR, DatasetWriter, PanopticWriter, PredictionWriter, segment_ids,
)
from efficientps_ros.metrics import ClassPQ, ConfusionMatrix, PanopticQuality
from efficientps_ros.model.config import CITYSCAPES_CLASSES

VOID = 255
ROAD, SKY, PERSON, CAR = 0, 10, 11, 13


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
    # The class-0 prediction on void truth is in no union; the two void predictions on class 2 are in its.
    assert confusion.intersection().tolist() == [1, 1, 2] and confusion.union().tolist() == [2, 2, 4]


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
    summary = pq.summary()
    assert {k: summary[k] for k in ("pq", "sq", "rq", "pq_things", "pq_stuff")} == dict.fromkeys(
        ("pq", "sq", "rq", "pq_things", "pq_stuff"), 1.0
    )
    assert (summary["n"], summary["n_things"], summary["n_stuff"]) == (3, 1, 2)


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


def _car_and_crowd(crowd_class: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """8x20 road; a true car (instance 1) in columns 2-9, a crowd (instance 2) in 10-17."""
    semantic = np.full((8, 20), ROAD, np.uint8)
    instance = np.zeros((8, 20), np.uint16)
    semantic[:, 2:10], instance[:, 2:10] = CAR, 1
    semantic[:, 10:18], instance[:, 10:18] = crowd_class, 2
    return semantic, instance, [False, True]


def test_a_car_crowd_stays_in_the_union_of_a_car_spanning_it():
    truth, ids, crowd = _car_and_crowd(CAR)
    prediction = truth.copy()
    pq = _pq()
    pq.update(truth, ids, prediction, (prediction == CAR).astype(np.uint16), crowd)
    # IoU 64 / 128 is no match, and half the prediction on the crowd is not more than half.
    assert (pq.classes[CAR].tp, pq.classes[CAR].fp, pq.classes[CAR].fn) == (0, 1, 1)
    assert pq.summary()["pq"] == 0.5


def test_a_crowd_absorbs_only_unmatched_predictions_of_its_own_class():
    for crowd_class, false_positives in ((CAR, 0), (PERSON, 1)):
        truth, ids, crowd = _car_and_crowd(crowd_class)
        prediction = truth.copy()
        prediction[:, 10:18] = CAR  # a second predicted car, on the crowd
        pq = _pq()
        pq.update(truth, ids, prediction, ids, crowd)
        assert (pq.classes[CAR].tp, pq.classes[CAR].fp) == (1, false_positives)
        assert PERSON not in pq.classes  # a crowd is never a false negative


def test_predicted_thing_pixels_without_an_instance_are_one_segment():
    semantic, instance = _ground_truth()
    one_car = semantic.copy()
    one_car[4:8, 12:17] = ROAD
    pq = _pq()
    pq.update(one_car, (one_car == CAR).astype(np.uint16), one_car, np.zeros_like(instance))
    assert pq.classes[CAR].tp == 1 and pq.classes[CAR].sq == 1.0


def test_true_thing_pixels_without_an_instance_are_a_crowd():
    semantic = np.full((4, 4), CAR, np.uint8)
    instance = np.zeros((4, 4), np.uint16)
    pq = _pq()
    pq.update(semantic, instance, semantic, instance)
    assert pq.classes == {}
    assert math.isnan(pq.summary()["pq"]) and pq.summary()["n"] == 0


def test_pq_counts_a_missed_stuff_class_and_a_spurious_one():
    pq = _pq()
    truth = np.full((4, 4), ROAD, np.uint8)
    prediction = np.full((4, 4), SKY, np.uint8)
    empty = np.zeros((4, 4), np.uint16)
    pq.update(truth, empty, prediction, empty)
    assert (pq.classes[ROAD].fn, pq.classes[SKY].fp) == (1, 1)
    assert pq.summary()["pq"] == 0.0


def _split_road() -> tuple[np.ndarray, np.ndarray]:
    """8x20 road that the ground truth splits in two segments: columns 0-11 (id 1) and 12-19 (id 2)."""
    semantic, instance = np.full((8, 20), ROAD, np.uint8), np.zeros((8, 20), np.uint16)
    instance[:, :12], instance[:, 12:] = 1, 2
    return semantic, instance


def test_stuff_segments_of_the_truth_are_matched_one_by_one_and_the_prediction_is_one():
    truth, ids = _split_road()
    pq = _pq()
    # The predicted road carries the same ids, but a prediction has one segment per stuff class.
    pq.update(truth, ids, truth, ids, [False, False])
    road = pq.classes[ROAD]
    # It meets the 96-pixel segment with IoU 96/160 and the 64-pixel one with 64/160.
    assert (road.tp, road.fp, road.fn) == (1, 0, 1) and road.sq == pytest.approx(0.6)
    assert road.pq == pytest.approx(0.6 / 1.5)


def _road_with_sky_crowd() -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """8x20 road with a sky segment (instance 1) in columns 10-17, flagged crowd."""
    truth, ids = _road()
    truth[:, 10:18], ids[:, 10:18] = SKY, 1
    return truth, ids, [True]


def test_a_stuff_crowd_is_never_missed_and_absorbs_predictions_of_its_class():
    truth, ids, crowd = _road_with_sky_crowd()
    pq = _pq()
    pq.update(truth, ids, np.full_like(truth, ROAD), np.zeros_like(ids), crowd)  # the crowd not found
    pq.update(truth, ids, truth, np.zeros_like(ids), crowd)  # sky predicted on the crowd
    assert SKY not in pq.classes
    assert pq.classes[ROAD].tp == 2 and pq.classes[ROAD].fp == pq.classes[ROAD].fn == 0


def test_pq_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        _pq().update(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 3)))


# --- Cross-checks with cityscapesscripts 2.3.0, run on files as a user would. ---

# A case is a list of images: (true semantic, true instance, crowd flags, predicted semantic, predicted instance).
Case = list[tuple[np.ndarray, np.ndarray, list[bool], np.ndarray, np.ndarray]]


@pytest.fixture
def cityscapes(monkeypatch):
    """cityscapesscripts' evaluation modules, with the `np.in1d` that numpy 2.4 removed."""
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as panoptic
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pixel

    for key, value in {"quiet": True, "JSONOutput": False, "evalInstLevelScore": True}.items():
        monkeypatch.setattr(pixel.args, key, value)
    return panoptic, pixel


def _write(tmp_path, case: Case):
    """The case as a Cityscapes dataset and a prediction folder; returns their paths."""
    gt, results = tmp_path / "gt", tmp_path / "results"
    with DatasetWriter(gt, "val", CITYSCAPES_CLASSES) as dataset, PredictionWriter(results, CITYSCAPES_CLASSES) as out:
        for index, (t_sem, t_ins, crowd, p_sem, p_ins) in enumerate(case):
            name = f"case_000000_{index:06d}"
            dataset.write(name, np.zeros((*t_sem.shape, 3), np.uint8), t_sem, t_ins, crowd)
            out.write(name, p_sem, p_ins)
    if any((t_ins[~_things(t_sem)] > 0).any() for t_sem, t_ins, *_ in case):
        _rewrite_with_stuff_segments(gt, case)
    return gt, results


def _things(semantic: np.ndarray) -> np.ndarray:
    return np.isin(semantic, [c.train_id for c in CITYSCAPES_CLASSES if c.is_thing])


def _rewrite_with_stuff_segments(gt, case: Case) -> None:
    """The panoptic ground truth again, stuff instance k as segment label id * 1000 + k, a crowd if flagged.

    Cityscapes has no stuff instances, so the dataset writer drops them;
    COCO-panoptic ground truth, all that evaluatePanoptic reads, may have them.
    """
    folder = gt / "gtFine"
    with PanopticWriter(folder / "cityscapes_panoptic_val.json", folder / "cityscapes_panoptic_val",
                        CITYSCAPES_CLASSES) as panoptic:
        for index, (t_sem, t_ins, crowd, *_) in enumerate(case):
            name = f"case_000000_{index:06d}"
            ids = segment_ids(t_sem, t_ins, CITYSCAPES_CLASSES, crowd)
            stuff = ~_things(t_sem) & (t_sem != VOID) & (t_ins > 0)
            ids = np.where(stuff, ids * INSTANCE_FACTOR + t_ins, ids)
            panoptic.add(name, f"{name}_gtFine_panoptic.png", ids, image_file=f"{name}_leftImg8bit.png")
    path = folder / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    things = {c.label_id for c in CITYSCAPES_CLASSES if c.is_thing}
    for annotation, (_, _, crowd, *_) in zip(data["annotations"], case):
        for segment in annotation["segments_info"]:
            k = segment["id"] % INSTANCE_FACTOR
            if segment["id"] >= INSTANCE_FACTOR and segment["category_id"] not in things and crowd[k - 1:k] == [True]:
                segment["iscrowd"] = 1
    path.write_text(json.dumps(data))


def _ours(case: Case) -> tuple[PanopticQuality, ConfusionMatrix]:
    pq = PanopticQuality(19, frozenset(c.train_id for c in CITYSCAPES_CLASSES if c.is_thing))
    confusion = ConfusionMatrix(19)
    for t_sem, t_ins, crowd, p_sem, p_ins in case:
        pq.update(t_sem, t_ins, p_sem, p_ins, crowd)
        confusion.update(t_sem, p_sem)
    return pq, confusion


def _assert_agrees(tmp_path, cityscapes, case: Case) -> dict:
    panoptic, pixel = cityscapes
    gt, results = _write(tmp_path, case)
    theirs = panoptic.evaluatePanoptic(
        str(gt / "gtFine" / "cityscapes_panoptic_val.json"), str(gt / "gtFine" / "cityscapes_panoptic_val"),
        str(results / "panoptic.json"), str(results / "panoptic"), str(tmp_path / "pq.json"),
    )
    pq, confusion = _ours(case)
    ours = pq.summary()
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        assert ours["n" + suffix] == theirs[group]["n"]
        for name in ("pq", "sq", "rq"):
            assert ours[name + suffix] == pytest.approx(theirs[group][name], abs=1e-9), (group, name)
    for c in CITYSCAPES_CLASSES:
        mine = pq.classes.get(c.train_id, ClassPQ())
        for name in ("pq", "sq", "rq"):
            assert getattr(mine, name) == pytest.approx(theirs["per_class"][c.label_id][name], abs=1e-9), c.name

    names = sorted(p.name for p in (gt / "gtFine" / "val").rglob("*_labelIds.png"))
    truth = [str(next((gt / "gtFine" / "val").rglob(n))) for n in names]
    predictions = [str(results / "labelIds" / n.replace("_gtFine", "")) for n in names]
    scores = pixel.evaluateImgLists(predictions, truth, pixel.args)
    ious = confusion.iou()
    for c in CITYSCAPES_CLASSES:
        assert ious[c.train_id] == pytest.approx(scores["classScores"][c.name], abs=1e-9, nan_ok=True), c.name
    assert confusion.mean_iou() == pytest.approx(scores["averageScoreClasses"], abs=1e-9)
    return ours


def _road(height: int = 8, width: int = 20) -> tuple[np.ndarray, np.ndarray]:
    return np.full((height, width), ROAD, np.uint8), np.zeros((height, width), np.uint16)


def _crowd_cases() -> dict[str, Case]:
    cases = {}
    for crowd_class in (CAR, PERSON):
        truth, ids, crowd = _car_and_crowd(crowd_class)
        spanning = truth.copy()
        spanning[:, 2:18] = CAR
        cases[f"one car over car and crowd ({crowd_class})"] = [
            (truth, ids, crowd, spanning, (spanning == CAR).astype(np.uint16))
        ]
        two = spanning.copy()
        cases[f"a second car on the crowd ({crowd_class})"] = [(truth, ids, crowd, two, np.where(two == CAR, ids, 0))]
    return cases


def _void_cases() -> dict[str, Case]:
    truth, ids = _road()
    truth[:3] = VOID
    prediction = np.full_like(truth, ROAD)
    pred_ids = np.zeros_like(ids)
    prediction[0:4, 0:4], pred_ids[0:4, 0:4] = CAR, 1  # 12 of 16 pixels on void: ignored
    prediction[2:4, 10:14], pred_ids[2:4, 10:14] = CAR, 2  # exactly half on void: a false positive
    prediction[5:8, 16:20] = VOID  # void predicted on road: missed pixels
    return {"void": [(truth, ids, [], prediction, pred_ids)]}


def _unlabelled_cases() -> dict[str, Case]:
    truth, ids = _road()
    truth[2:6, 3:9], ids[2:6, 3:9] = CAR, 1
    truth[1:7, 12:14] = PERSON  # true person pixels without an id: a crowd
    prediction = truth.copy()
    prediction[1:7, 14] = PERSON
    return {"thing pixels without an instance id": [(truth, ids, [], prediction, np.zeros_like(ids))]}


def _tiny_cases() -> dict[str, Case]:
    truth, ids = _road()
    truth[1, 1], ids[1, 1] = CAR, 1
    truth[5, 5:7], ids[5, 5:7] = PERSON, 1
    truth[7, 19] = SKY
    prediction, pred_ids = truth.copy(), ids.copy()
    prediction[5, 6], pred_ids[5, 6] = ROAD, 0  # IoU 1/2 is no match
    prediction[0, 19] = SKY  # IoU 1/2 again
    return {"tiny segments": [(truth, ids, [], prediction, pred_ids)]}


def _empty_cases() -> dict[str, Case]:
    road, none = _road()
    void = np.full_like(road, VOID)
    car = road.copy()
    car[2:5, 2:5] = CAR
    car_ids = (car == CAR).astype(np.uint16)
    # cityscapesscripts divides by the number of classes seen, so each case also holds a plain image.
    plain = (car, car_ids, [], car, car_ids)
    return {
        "empty truth": [(void, none, [], car, car_ids), plain],
        "empty prediction": [(car, car_ids, [], void, none), plain],
        "empty truth and prediction": [(void, none, [], void, none), plain],
    }


def _stuff_crowd_cases() -> dict[str, Case]:
    truth, ids, crowd = _road_with_sky_crowd()
    truth[2:4, 2:5], ids[2:4, 2:5] = CAR, 2  # cityscapesscripts divides by the thing classes seen
    crowd = crowd + [False]
    missed = np.where(truth == SKY, ROAD, truth)
    over = truth.copy()
    over[:, 6:18] = SKY  # a third of the predicted sky lies off the crowd
    return {
        "a stuff crowd not found": [(truth, ids, crowd, missed, np.where(missed == CAR, ids, 0))],
        "sky predicted over a sky crowd": [(truth, ids, crowd, over, np.where(over == CAR, ids, 0))],
    }


def _stuff_segment_cases() -> dict[str, Case]:
    truth, ids = _split_road()
    sky = truth.copy()
    sky[:2] = SKY  # a second, plain stuff class beside the split one
    sky_ids = np.where(sky == SKY, 0, ids)
    # cityscapesscripts divides by the number of thing classes seen, so a car is there too.
    sky[4:6, 2:5], sky_ids[4:6, 2:5] = CAR, 3
    return {"a stuff class in two true segments": [(sky, sky_ids, [], sky, sky_ids), (truth, ids, [], truth, ids)]}


CRAFTED = {**_crowd_cases(), **_void_cases(), **_unlabelled_cases(), **_tiny_cases(), **_empty_cases(),
           **_stuff_segment_cases(), **_stuff_crowd_cases()}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_cases_agree_with_cityscapesscripts(tmp_path, cityscapes, name):
    _assert_agrees(tmp_path, cityscapes, CRAFTED[name])


def test_the_crowd_cases_score_as_the_protocol_says(tmp_path, cityscapes):
    # One car over a car and a car crowd: no match (IoU 1/2), so car PQ 0 beside a perfect road.
    assert _assert_agrees(tmp_path / "a", cityscapes, CRAFTED[f"one car over car and crowd ({CAR})"])["pq"] == 0.5
    # A second car on a person crowd is a false positive: car PQ 1 / 1.5.
    ours = _assert_agrees(tmp_path / "b", cityscapes, CRAFTED[f"a second car on the crowd ({PERSON})"])
    assert ours["pq_things"] == pytest.approx(2 / 3)


def _random_image(rng: np.random.Generator, height: int = 24, width: int = 32):
    """Random stuff blocks, things (some crowds, some without ids), void; and a prediction near it."""
    semantic = rng.choice([0, 1, 2, 8, 10], size=(height // 8, width // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    instance = np.zeros((height, width), np.uint16)
    crowd = []
    for k in range(1, rng.integers(1, 7)):
        y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
        h, w = rng.integers(1, 10), rng.integers(1, 12)
        semantic[y : y + h, x : x + w] = rng.choice([11, 12, 13, 14, 18])
        instance[y : y + h, x : x + w] = k if rng.random() < 0.85 else 0
        crowd.append(bool(rng.random() < 0.2))
    semantic[rng.random((height, width)) < 0.03] = VOID
    instance[semantic == VOID] = 0
    prediction, pred_ids = semantic.copy(), instance.copy()
    shift = rng.integers(-3, 4, size=2)
    moved = rng.random() < 0.5
    if moved:
        prediction, pred_ids = np.roll(prediction, shift, (0, 1)), np.roll(pred_ids, shift, (0, 1))
    noise = rng.random((height, width)) < 0.1
    prediction[noise] = rng.choice([0, 2, 10, 13, VOID], size=int(noise.sum()))
    pred_ids[noise] = np.where(prediction[noise] == 13, rng.integers(0, 3, size=int(noise.sum())), 0)
    pred_ids[rng.random((height, width)) < 0.02] = 0
    return semantic, instance, crowd, prediction, pred_ids


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_agree_with_cityscapesscripts(tmp_path, cityscapes, seed):
    rng = np.random.default_rng(seed)
    _assert_agrees(tmp_path, cityscapes, [_random_image(rng) for _ in range(3)])


def test_truth_ids_that_name_no_class_are_void_in_both_metrics():
    prediction = np.array([[0, 1, 2, 0]])
    truth = np.array([[0, 1, 3, 254]])  # 3 and 254 name no class of three
    void = np.array([[0, 1, VOID, VOID]])
    confusion, expected = ConfusionMatrix(3), ConfusionMatrix(3)
    confusion.update(truth, prediction)
    expected.update(void, prediction)
    assert np.array_equal(confusion.matrix, expected.matrix) and np.array_equal(confusion.missed, expected.missed)
    pq, pq_void = PanopticQuality(3, frozenset({2})), PanopticQuality(3, frozenset({2}))
    zeros = np.zeros_like(truth)
    pq.update(truth, zeros, prediction, zeros)
    pq_void.update(void, zeros, prediction, zeros)
    assert pq.classes == pq_void.classes


def test_predicted_ids_that_name_no_class_are_misses_not_other_classes():
    confusion = ConfusionMatrix(3)
    # -1 would otherwise land in the previous row of the flattened matrix.
    confusion.update(np.array([[1, 1]]), np.array([[-1, 1]]))
    assert confusion.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]] and confusion.missed.tolist() == [0, 1, 0]
