"""The `efficientps` command's own checks: options refused before any work, in one line."""
import json

import numpy as np
import pytest
from PIL import Image

from efficientps_ros.cli import main


@pytest.mark.parametrize("split", ["../../escape", "", "a/b", "val/.."])
def test_a_split_that_is_not_a_plain_name_is_refused(tmp_path, capsys, split):
    assert main(["synth", str(tmp_path / "data"), "--count", "1", "--size", "32x64", "--split", split]) == 2
    assert f"--split {split!r}: allowed: 1 to 64 letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "data").exists()
    assert main(["evaluate", "--data", str(tmp_path), "--split", split, "--device", "cpu"]) == 2
    assert "--split" in capsys.readouterr().err


def test_synth_into_a_split_that_exists_is_refused_and_leaves_it_alone(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--count", "2", "--size", "32x64"]) == 0
    listing = data / "gtFine" / "cityscapes_panoptic_val.json"
    before = listing.read_bytes()
    assert main(["synth", str(data), "--count", "1", "--seed", "5", "--size", "32x64"]) == 2
    assert "split 'val' exists already" in capsys.readouterr().err
    assert listing.read_bytes() == before
    assert main(["synth", str(data), "--count", "1", "--size", "32x64", "--split", "test"]) == 0


def test_evaluate_refuses_bad_options_and_an_unwritable_json_path_before_it_evaluates(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("efficientps_ros.predictor.Predictor", lambda *args, **kwargs: built.append(args))
    data = tmp_path / "data"
    assert main(["synth", str(data), "--count", "1", "--size", "32x64"]) == 0
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["evaluate", "--data", str(data), "--device", "cpu", "--json", str(blocker / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(data), "--device", "cpu", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    for option in (["--brightness", "nan"], ["--brightness", "0"], ["--limit", "0"]):
        assert main(["evaluate", "--data", str(data), "--device", "cpu", *option]) == 2
        assert option[0].lstrip("-") in capsys.readouterr().err
    assert built == []


def test_predict_refuses_an_image_beyond_the_size_it_reads_from_its_header(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    assert main(["predict", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "big.png: its header declares more than" in err and "Traceback" not in err


def test_synth_refuses_a_count_beyond_its_bound_before_anything_is_written(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--count", "99999999999999999999", "--size", "64x128"]) == 2
    err = capsys.readouterr().err
    assert "--count 99999999999999999999: allowed: at most 1,000,000 scenes" in err and "Traceback" not in err
    assert not data.exists()


def test_synth_that_fails_part_way_leaves_no_listing_and_a_rerun_is_not_refused(tmp_path, capsys, monkeypatch):
    import efficientps_ros.data.synthetic as synthetic

    original, made = synthetic.street_scene, []

    def scene(*args, **kwargs):
        made.append(1)
        if len(made) == 2:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "street_scene", scene)
    data = tmp_path / "data"
    assert main(["synth", str(data), "--count", "3", "--size", "32x64"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    listing = data / "gtFine" / "cityscapes_panoptic_val.json"
    assert not listing.exists()
    monkeypatch.setattr(synthetic, "street_scene", original)
    assert main(["synth", str(data), "--count", "3", "--size", "32x64"]) == 0
    assert len(json.loads(listing.read_text())["annotations"]) == 3


def test_predict_refuses_two_images_whose_outputs_have_one_name_before_the_model_loads(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("efficientps_ros.predictor.Predictor", lambda *args, **kwargs: built.append(args))
    out = tmp_path / "p2"
    for first, second in (("a/x.png", "b/x.png"), ("a/x.png", "b/x_leftImg8bit.png"), ("a/x.png", "a/x.png")):
        assert main(["predict", str(tmp_path / first), str(tmp_path / second), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{tmp_path / first} and {tmp_path / second}: both would write outputs named 'x'" in err
    assert built == [] and not out.exists()
