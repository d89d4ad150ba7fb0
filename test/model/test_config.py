import dataclasses

import pytest
import yaml

from efficientps_ros.model.config import (
    CITYSCAPES_CLASSES,
    PRESETS,
    EfficientPSConfig,
    config_from_dict,
    load_config,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml(name, tmp_path):
    config = load_config(name)
    path = tmp_path / "model.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_b5_is_the_papers_model():
    config = load_config("b5_cityscapes")
    assert config.backbone.name == "tf_efficientnet_b5"
    assert (config.fpn_channels, config.semantic_channels) == (256, 128)
    assert config.dpc_dilations == ((1, 6), (1, 1), (6, 21), (18, 15), (6, 3))
    assert (config.num_stuff, config.num_things) == (11, 8)
    fusion = config.fusion
    assert (fusion.score_threshold, fusion.overlap_threshold, fusion.min_stuff_area) == (0.5, 0.5, 2048)


def test_cityscapes_table_is_in_train_id_order_with_label_ids():
    names = [c.name for c in CITYSCAPES_CLASSES]
    assert names[0] == "road" and names[10] == "sky" and names[11] == "person" and names[18] == "bicycle"
    assert [c.train_id for c in CITYSCAPES_CLASSES] == list(range(19))
    assert {c.name: c.label_id for c in CITYSCAPES_CLASSES}["car"] == 26
    assert [c.is_thing for c in CITYSCAPES_CLASSES] == [False] * 11 + [True] * 8


def test_preset_with_overrides_from_yaml(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump({"preset": "small", "fusion": {"min_stuff_area": 64}, "fpn_channels": 32}))
    config = load_config(path)
    assert config.fusion.min_stuff_area == 64
    assert config.fpn_channels == 32
    assert config.backbone.name == "tf_efficientnet_b0"
    assert config.fusion.score_threshold == load_config("small").fusion.score_threshold


@pytest.mark.parametrize(
    "data, message",
    [
        ({"fpn_channel": 3}, "unknown keys ['fpn_channel']"),
        ({"fusion": {"min_stuff_area": "big"}}, "config.fusion.min_stuff_area"),
        ({"fusion": {"min_stuff_area": 2.5}}, "config.fusion.min_stuff_area"),
        ({"preset": "b9"}, "unknown preset 'b9'"),
        ({"dpc_dilations": [[1, 1]]}, "DPC has 5 branches"),
    ],
)
def test_bad_configs_are_refused_by_name(data, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(data)


def test_class_table_must_put_stuff_first():
    classes = list(CITYSCAPES_CLASSES)
    classes[0], classes[11] = dataclasses.replace(classes[11], train_id=0), dataclasses.replace(classes[0], train_id=11)
    data = EfficientPSConfig(classes=tuple(classes)).to_dict()
    with pytest.raises(ValueError, match="stuff classes must come before thing classes"):
        config_from_dict(data)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not a preset"):
        load_config("nonexistent_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fusion: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
