"""`evaluate`, and the synth -> evaluate and predict commands end to end, checked with cityscapesscripts."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from efficientps_ros.cli import main
from efficientps_ros.data.cityscapes_layout import decode_rgb
from efficientps_ros.data.datasets import PanopticDataset
from efficientps_ros.data.synthetic import Scene, scene_seed, street_scene
from efficientps_ros.evaluate import evaluate, format_table, scale_brightness
from efficientps_ros.model import load_config
from efficientps_ros.model.config import ClassInfo
from efficientps_ros.predictor import Predictor
from efficientps_ros.result import PanopticResult

CONFIG = load_config("small")


class _Oracle:
    """Predicts a fixed answer per call and keeps the images it was given."""

    def __init__(self, answers):
        self.config = CONFIG
        self.answers = list(answers)
        self.images = []

    def predict(self, image):
        self.images.append(image)
        semantic, instance = self.answers[len(self.images) - 1]
        return PanopticResult(semantic, instance, np.zeros(semantic.shape, np.int32))


def _scenes() -> list[Scene]:
    semantic = np.zeros((8, 8), np.uint8)
    semantic[:2] = 10  # sky
    instance = np.zeros((8, 8), np.uint16)
    semantic[4:6, 2:5], instance[4:6, 2:5] = 13, 1
    image = np.full((8, 8, 3), 100, np.uint8)
    return [Scene(image, semantic.copy(), instance.copy(), [13], [False]) for _ in range(2)]


def test_a_perfect_predictor_scores_one_and_the_counts_add_up():
    scenes = _scenes()
    summary = evaluate(_Oracle([(s.semantic, s.instance) for s in scenes]), scenes, progress=False)
    assert (summary["pq"], summary["sq"], summary["rq"], summary["miou"]) == (1.0, 1.0, 1.0, 1.0)
    assert (summary["n"], summary["n_things"], summary["n_stuff"], summary["images"]) == (3, 1, 2, 2)
    car = summary["classes"]["car"]
    assert (car["tp"], car["fp"], car["fn"], car["pixels_intersection"], car["pixels_union"]) == (2, 0, 0, 12, 12)
    # Classes that never occur have no IoU: null in JSON, not NaN.
    assert summary["classes"]["bus"]["iou"] is None
    json.dumps(summary, allow_nan=False)
    table = format_table(summary)
    assert "car" in table and "All" in table and "mIoU 100.0" in table
    assert "warning" not in table and summary["unlisted_segments"]["pixels"] == 0


def test_classes_without_segments_have_no_panoptic_scores_and_missed_ones_score_zero():
    scenes = _scenes()
    no_car = [(np.where(s.semantic == 13, 0, s.semantic).astype(np.uint8), np.zeros_like(s.instance)) for s in scenes]
    summary = evaluate(_Oracle(no_car), scenes, progress=False)
    bus, car = summary["classes"]["bus"], summary["classes"]["car"]
    # The table prints "-" for the bus; the JSON must not say it scored 0.
    assert (bus["pq"], bus["sq"], bus["rq"]) == (None, None, None)
    assert (car["pq"], car["sq"], car["rq"], car["fn"]) == (0.0, 0.0, 0.0, 2)
    assert "bus            |     -     -     - |" in format_table(summary)


def test_an_empty_dataset_is_refused_not_scored_as_nan():
    with pytest.raises(ValueError, match="nothing to evaluate: the dataset has no images"):
        evaluate(_Oracle([]), [], progress=False)


def test_ground_truth_segments_missing_from_segments_info_are_reported(tmp_path):
    from efficientps_ros.data.cityscapes_layout import DatasetWriter

    scenes = _scenes()
    with DatasetWriter(tmp_path, "val", CONFIG.classes) as writer:
        for i, s in enumerate(scenes):
            writer.write(f"city_000000_{i:06d}", s.image, s.semantic, s.instance, s.crowd)
    path = tmp_path / "gtFine/cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    # The car (6 pixels) of the second image is left out of its segments_info.
    data["annotations"][1]["segments_info"] = [s for s in data["annotations"][1]["segments_info"] if s["id"] != 26001]
    path.write_text(json.dumps(data))
    dataset = PanopticDataset(tmp_path, "val")
    summary = evaluate(_Oracle([(s.semantic, s.instance) for s in scenes]), dataset, progress=False)
    assert summary["unlisted_segments"] == {"images": 1, "segments": 1, "pixels": 6, "examples": ["city_000000_000001"]}
    # Scored as void, the car predicted there is ignored (over half of it lies on void).
    assert summary["classes"]["car"]["tp"] == 1 and summary["classes"]["car"]["fp"] == 0
    assert ("warning: 1 segment (6 pixels) in 1 of 2 ground-truth PNGs are missing from segments_info "
            "and were scored as void (first: city_000000_000001)") in format_table(summary)
    json.dumps(summary, allow_nan=False)


def test_a_predicted_car_on_a_car_crowd_is_no_false_positive():
    scene = _scenes()[0]
    crowd = Scene(scene.image, scene.semantic, scene.instance, [13], [True])
    # The model finds a car where the ground truth has only a crowd of cars.
    summary = evaluate(_Oracle([(scene.semantic, scene.instance)]), [crowd], progress=False)
    car = summary["classes"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (0, 0, 0)
    counted = evaluate(_Oracle([(scene.semantic, scene.instance)]), [scene], progress=False)["classes"]["car"]
    assert (counted["tp"], counted["fp"], counted["fn"]) == (1, 0, 0)


def test_limit_and_brightness_reach_the_predictor():
    scenes = _scenes()
    empty = (np.full((8, 8), 255, np.uint8), np.zeros((8, 8), np.uint16))
    oracle = _Oracle([empty] * 2)
    summary = evaluate(oracle, scenes, limit=1, progress=False, brightness=0.6)
    assert len(oracle.images) == 1 and summary["images"] == 1 and summary["brightness"] == 0.6
    assert (oracle.images[0] == 60).all()
    assert summary["pq"] == 0.0 and summary["miou"] == 0.0  # everything missed
    assert scale_brightness(np.array([[[200, 100, 1]]], np.uint8), 1.4).tolist() == [[[255, 140, 1]]]


@pytest.mark.parametrize("brightness", [0, -1, float("nan"), float("inf"), 1e-30, 21, "1", True])
def test_brightness_must_be_a_finite_factor_in_range(brightness):
    oracle = _Oracle([])
    with pytest.raises(ValueError, match="brightness must be a number from 0.05 to 20.0"):
        evaluate(oracle, _scenes(), brightness=brightness, progress=False)
    assert oracle.images == []


def test_a_bad_limit_and_foreign_class_tables_are_refused():
    scenes = _scenes()
    with pytest.raises(ValueError, match="limit must be at least 1"):
        evaluate(_Oracle([]), scenes, limit=0, progress=False)
    other = SimpleNamespace(classes=(ClassInfo(0, 7, "road", (1, 1, 1), False),))
    with pytest.raises(ValueError, match="class table"):
        evaluate(_Oracle([]), other, progress=False)


def _cityscapes_scores(monkeypatch, data, predictions, tmp_path):
    """What cityscapesscripts' panoptic and pixel-level evaluations make of saved predictions."""
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as panoptic
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pixel

    pq = panoptic.evaluatePanoptic(
        str(data / "gtFine/cityscapes_panoptic_val.json"), str(data / "gtFine/cityscapes_panoptic_val"),
        str(predictions / "panoptic.json"), str(predictions / "panoptic"), str(tmp_path / "pq.json"),
    )
    for key, value in {"quiet": True, "JSONOutput": False, "evalInstLevelScore": False}.items():
        monkeypatch.setattr(pixel.args, key, value)
    truth = sorted((data / "gtFine/val").rglob("*_gtFine_labelIds.png"))
    # Found the way the official script finds them: a recursive search of its results folder.
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(predictions / "labelIds"))
    monkeypatch.setattr(pixel.args, "predictionPath", None)
    monkeypatch.setattr(pixel.args, "predictionWalk", None)
    guesses = [pixel.getPrediction(pixel.args, str(p)) for p in truth]
    assert guesses == [str(predictions / "labelIds" / p.name.replace("_gtFine", "")) for p in truth]
    return pq, pixel.evaluateImgLists(guesses, [str(p) for p in truth], pixel.args)


def test_synth_then_evaluate_agrees_with_cityscapesscripts(tmp_path, monkeypatch, capsys):
    data, predictions, report = tmp_path / "data", tmp_path / "predictions", tmp_path / "eval.json"
    assert main(["synth", str(data), "--count", "3", "--seed", "4", "--size", "96x192"]) == 0
    assert len(PanopticDataset(data, "val")) == 3
    assert main(["evaluate", "--data", str(data), "--device", "cpu", "--json", str(report),
                 "--save-predictions", str(predictions)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(report.read_text())
    assert summary["images"] == 3 and "All" in printed and "mIoU" in printed
    pq, pixel = _cityscapes_scores(monkeypatch, data, predictions, tmp_path)
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        assert summary["pq" + suffix] == pytest.approx(pq[group]["pq"], abs=1e-9)
        assert summary["n" + suffix] == pq[group]["n"]
    assert summary["miou"] == pytest.approx(pixel["averageScoreClasses"], abs=1e-9)


def test_saved_predictions_of_a_limited_run_agree_with_cityscapesscripts(tmp_path, monkeypatch):
    data, predictions, report = tmp_path / "data", tmp_path / "predictions", tmp_path / "eval.json"
    assert main(["synth", str(data), "--count", "3", "--seed", "5", "--size", "64x128"]) == 0
    assert main(["evaluate", "--data", str(data), "--device", "cpu", "--limit", "2", "--json", str(report),
                 "--save-predictions", str(predictions)]) == 0
    summary = json.loads(report.read_text())
    truth = json.loads((predictions / "ground_truth.json").read_text())
    evaluated = ["synthetic_000005_000000", "synthetic_000005_000001"]
    assert [a["image_id"] for a in truth["annotations"]] == [i["id"] for i in truth["images"]] == evaluated
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    pq = evaluatePanoptic(
        str(predictions / "ground_truth.json"), str(data / "gtFine/cityscapes_panoptic_val"),
        str(predictions / "panoptic.json"), str(predictions / "panoptic"), str(tmp_path / "pq.json"),
    )
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        assert summary["pq" + suffix] == pytest.approx(pq[group]["pq"], abs=1e-9)
        assert summary["n" + suffix] == pq[group]["n"]


def test_synth_streams_are_reproducible_and_splits_differ(tmp_path):
    for name, split in (("a", "val"), ("b", "val"), ("c", "test")):
        args = ["synth", str(tmp_path / name), "--count", "2", "--seed", "9", "--size", "64x96", "--split", split]
        assert main(args) == 0

    def image(name, split):
        path = tmp_path / name / "leftImg8bit" / split / "synthetic" / "synthetic_000009_000001_leftImg8bit.png"
        return np.asarray(Image.open(path))
    assert np.array_equal(image("a", "val"), image("b", "val"))
    assert not np.array_equal(image("a", "val"), image("c", "test"))


def test_bad_arguments_get_one_message(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--size", "10x10"]) == 2
    assert "at least 32" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_refuses_a_split_that_lists_no_images_before_it_builds_the_model(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("efficientps_ros.predictor.Predictor", lambda *args, **kwargs: built.append(args))
    assert main(["synth", str(tmp_path), "--count", "1", "--size", "32x64"]) == 0
    path = tmp_path / "gtFine/cityscapes_panoptic_val.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), images=[], annotations=[])))
    capsys.readouterr()
    assert main(["evaluate", "--data", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"efficientps evaluate: split 'val' of {tmp_path} lists no images") and err.count("\n") == 1
    assert built == []


def test_evaluate_checks_the_dataset_and_class_table_before_it_builds_the_model(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("efficientps_ros.predictor.Predictor", lambda *args, **kwargs: built.append(args))
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    table = tmp_path / "classes.yaml"
    table.write_text("- {name: road, id: 7, isthing: 0, color: [1, 2, 3]}\n"
                     "- {name: car, id: 26, isthing: 1, color: [1, 2, 3]}\n")
    assert main(["evaluate", "--data", str(tmp_path), "--classes", str(table), "--device", "cpu"]) == 2
    assert "class table" in capsys.readouterr().err
    assert built == []


def test_predict_writes_label_ids_and_coco_panoptic(tmp_path):
    image = np.asarray(Image.open(_one_scene_image(tmp_path)))
    out = tmp_path / "out"
    path = tmp_path / "frankfurt_000000_000294_leftImg8bit.png"
    assert main(["predict", str(path), "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "panoptic.json").read_text())
    (annotation,) = data["annotations"]
    assert annotation["image_id"] == "frankfurt_000000_000294"
    ids = decode_rgb(np.asarray(Image.open(out / "panoptic" / annotation["file_name"])))
    # The COCO PNG holds the very panoptic map the predictor made.
    assert np.array_equal(ids, np.load(out / "frankfurt_000000_000294_leftImg8bit_panoptic.npy"))
    assert {s["id"] for s in annotation["segments_info"]} == set(np.unique(ids).tolist()) - {0}
    labels = np.asarray(Image.open(out / "labelIds" / "frankfurt_000000_000294_labelIds.png"))
    semantic = np.asarray(Image.open(out / "frankfurt_000000_000294_leftImg8bit_semantic.png"))
    label_of = np.array([c.label_id for c in CONFIG.classes] + [0] * (256 - len(CONFIG.classes)))
    assert labels.shape == image.shape[:2] and np.array_equal(labels, label_of[semantic])


def _one_scene_image(tmp_path):
    from efficientps_ros.data.synthetic import street_scene

    path = tmp_path / "frankfurt_000000_000294_leftImg8bit.png"
    Image.fromarray(street_scene(96, 192, seed=1).image).save(path)
    return path


def test_predict_names_a_missing_or_corrupt_image(tmp_path, capsys):
    corrupt = tmp_path / "broken_leftImg8bit.png"
    corrupt.write_bytes(b"not a png")
    for path in (tmp_path / "missing.png", corrupt):
        assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "not readable as an image" in err and "Traceback" not in err


def test_predict_names_an_output_folder_it_cannot_make_before_it_loads_the_model(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("efficientps_ros.predictor.Predictor", lambda *args, **kwargs: built.append(args))
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["predict", str(tmp_path / "any.png"), "--out", str(afile / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"efficientps predict: --out {afile / 'out'}: cannot be made (Not a directory)\n"
    assert built == []


def test_the_packaged_model_segments_streets_it_never_saw():
    # 20 scenes of a test-split stream that no training scene can come from and
    # that the README's numbers do not use. Measured with the packaged model:
    # PQ 54.9 (things 59.8, stuff 51.4), mIoU 68.4; at brightness x0.6 PQ 54.8.
    scenes = [street_scene(256, 512, seed=scene_seed("test", 99, i)) for i in range(20)]
    predictor = Predictor("small", device="cpu")
    plain, dark = (evaluate(predictor, scenes, progress=False, brightness=b) for b in (1.0, 0.6))
    assert sum(c["iou"] is not None for c in plain["classes"].values()) == 19
    assert plain["pq"] > 0.48 and plain["miou"] > 0.60, (plain["pq"], plain["miou"])
    assert plain["pq_things"] > 0.50 and plain["pq_stuff"] > 0.44, (plain["pq_things"], plain["pq_stuff"])
    assert plain["pq"] - dark["pq"] < 0.05, (plain["pq"], dark["pq"])
