"""The node's model loading, without a node: the settings reach the predictor."""
import pytest

from efficientps_ros.predictor import Predictor
from efficientps_ros.ros.node import load_model
from efficientps_ros.ros.params import NodeSettings, ParameterError


def _recording_warm_up(monkeypatch):
    calls = []
    original = Predictor.warm_up

    def warm_up(self, sizes, batch=1):
        calls.append((list(sizes), batch))
        return original(self, sizes, batch)

    monkeypatch.setattr(Predictor, "warm_up", warm_up)
    return calls


def test_a_fixed_inference_size_is_warmed_up_for_every_camera_at_once(monkeypatch):
    calls = _recording_warm_up(monkeypatch)
    settings = NodeSettings.from_values({
        "device": "cpu", "inference_height": 64, "inference_width": 128,
        "image_topics": ["front/image_raw", "rear/image_raw"],
    })
    predictor = load_model(settings)
    assert calls == [([(64, 128)], 2)]
    assert predictor.input_size == (64, 128)


def test_native_sizes_are_not_known_before_the_first_frame_so_nothing_is_warmed_up(monkeypatch):
    calls = _recording_warm_up(monkeypatch)
    load_model(NodeSettings.from_values({"device": "cpu"}))
    assert calls == []


def test_the_models_own_divisor_decides_whether_the_inference_size_fits(monkeypatch, tmp_path):
    calls = _recording_warm_up(monkeypatch)
    config = tmp_path / "divisor128.yaml"
    config.write_text("preset: small\nname: divisor128\nsize_divisor: 128\n")
    # 96x160 pads to 128x256 for this model: above the limit, though 96x160 at a divisor of 32 is not.
    settings = NodeSettings.from_values({
        "device": "cpu", "model.preset_or_config": str(config),
        "inference_height": 96, "inference_width": 160, "max_image_pixels": 128 * 256 - 1,
    })
    with pytest.raises(ParameterError, match=r"multiple of 128 \(128x256\)"):
        load_model(settings)
    assert calls == []


@pytest.mark.parametrize("compile", [False, True])
def test_the_compile_parameter_reaches_the_predictor(compile):
    # Without a fixed inference size nothing runs yet, so nothing is compiled here.
    predictor = load_model(NodeSettings.from_values({"device": "cpu", "compile": compile}))
    assert predictor.compiled is compile
