import dataclasses
import re
import time
import typing

import pytest
import torch
import yaml

from efficientps_ros import model
from efficientps_ros.model import build_model, parameter_count
from efficientps_ros.model.config import (
    CITYSCAPES_CLASSES,
    MAX_NESTING,
    MAX_ROI_VALUES,
    PRESETS,
    BackboneConfig,
    ClassInfo,
    EfficientPSConfig,
    FusionConfig,
    check_config,
    config_from_dict,
    load_config,
    parse_size,
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
        ({"dpc_dilations": [[1, 1]]}, "config.dpc_dilations: 1 values given; allowed: 5"),
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


# --- every field has a type and a range --------------------------------------

def _leaf_fields(cls, prefix="config"):
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaf_fields(hint, f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", hint, f


def test_every_field_but_flags_has_a_bound():
    fields = list(_leaf_fields(EfficientPSConfig)) + list(_leaf_fields(ClassInfo, "class"))
    unbounded = [name for name, hint, f in fields if hint is not bool and "bound" not in f.metadata]
    assert len(fields) > 50 and unbounded == []


def _small_with(**changes):
    data = load_config("small").to_dict()
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[int(parent)] if parent.isdigit() else target[parent]
        target[int(key) if key.isdigit() else key] = value
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size_divisor": 0}, "config.size_divisor: 0 is out of range; allowed: 32 to 1024, a multiple of 32"),
        ({"size_divisor": -32}, "config.size_divisor: -32 is out of range"),
        ({"size_divisor": 48}, "config.size_divisor: 48 is out of range; allowed: 32 to 1024, a multiple of 32"),
        ({"fpn_channels": 1_000_000}, "config.fpn_channels: 1000000 is out of range; allowed: 1 to 1024"),
        ({"roi__box_fc_channels": 0}, "config.roi.box_fc_channels: 0 is out of range; allowed: 1 to 4096"),
        ({"pixel_std": [0, 0, 0]}, "config.pixel_std[0]: 0 is out of range; allowed: more than 0 and at most 255"),
        ({"pixel_mean": [1.0, 2.0]}, "config.pixel_mean: expected 3 values, got 2"),
        ({"pixel_mean": [1.0, "x", 2.0]}, "config.pixel_mean[1]: expected a number, got 'x'"),
        ({"backbone__norm_eps": -1e-3}, "config.backbone.norm_eps: -0.001 is out of range; allowed: more than 0"),
        ({"head_norm_eps": 0}, "config.head_norm_eps: 0 is out of range; allowed: more than 0 and at most 1"),
        ({"head_norm_eps": float("nan")}, "config.head_norm_eps: expected a finite number, got nan"),
        ({"rpn__post_nms_top_n_test": -1}, "config.rpn.post_nms_top_n_test: -1 is out of range; allowed: 1 to 10000"),
        ({"rpn__pre_nms_top_n_train": 0}, "config.rpn.pre_nms_top_n_train: 0 is out of range"),
        ({"roi__detections_per_image": 0}, "config.roi.detections_per_image: 0 is out of range; allowed: 1 to 999"),
        ({"fusion__max_instances": 1000}, "config.fusion.max_instances: 1000 is out of range; allowed: 1 to 999"),
        ({"fusion__score_threshold": 1.5}, "config.fusion.score_threshold: 1.5 is out of range; allowed: 0 to 1"),
        ({"rpn__anchor_ratios": []}, "config.rpn.anchor_ratios: 0 values given; allowed: 1 to 16"),
        ({"dpc_dilations__0": [0, 6]}, "config.dpc_dilations[0][0]: 0 is out of range; allowed: 1 to 128"),
        ({"backbone__tap_stages": [1, 2]}, "config.backbone.tap_stages: expected 3 values, got 2"),
        ({"classes__0__label_id": 10**12}, "config.classes[0].label_id: 1000000000000 is out of range; allowed: 1 to 65535"),
        ({"classes__0__label_id": 0}, "config.classes[0].label_id: 0 is out of range; allowed: 1 to 65535"),
        ({"classes__0__color": [999999, -5]}, "config.classes[0].color: expected 3 values, got 2"),
        ({"classes__0__color": [999999, 0, 0]}, "config.classes[0].color[0]: 999999 is out of range; allowed: 0 to 255"),
        ({"classes__0__name": ""}, "config.classes[0].name: '' is not allowed; allowed: 1 to 64 printable characters"),
        ({"classes__0__is_thing": "no"}, "config.classes[0].is_thing: expected true or false, got 'no'"),
        ({"classes__1__label_id": 7}, r"config.classes: label ids [7] are used twice"),
        ({"name": "../../elsewhere"}, "config.name: '../../elsewhere' is not allowed"),
        ({"backbone__name": "hf-hub:timm/efficientnet_b0.ra_in1k"},
         "config.backbone.name: 'hf-hub:timm/efficientnet_b0.ra_in1k' is not allowed; allowed: efficientnet_b0 .. "),
        ({"backbone__name": "tf_efficientnet_b0.ns_jft_in1k"},
         "config.backbone.name: 'tf_efficientnet_b0.ns_jft_in1k' is not allowed"),
    ],
)
def test_out_of_range_fields_are_refused_naming_field_and_range(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(_small_with(**changes))


@pytest.mark.parametrize(
    "changes, message",
    [
        # Each value is inside its own range; together they would need gigabytes a frame.
        ({"rpn__post_nms_top_n_test": 10_000, "roi__box_roi_size": 64},
         "config: rpn.post_nms_top_n_test (10000) x roi.box_roi_size² x fpn_channels = 262144 is 2,621,440,000"),
        ({"roi__batch_size_per_image": 100_000, "fpn_channels": 1024},
         "config: roi.batch_size_per_image (100000) x roi.box_roi_size² x fpn_channels = 50176"),
        ({"roi__detections_per_image": 999, "roi__mask_roi_size": 128, "roi__mask_channels": 1024},
         "config: roi.detections_per_image (999) x (2 x roi.mask_roi_size)² x max(fpn_channels, roi.mask_channels)"),
    ],
)
def test_roi_counts_and_sizes_that_need_over_a_gigabyte_of_features_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(_small_with(**changes))


def test_the_largest_roi_settings_of_the_presets_fit_with_room():
    b5 = load_config("b5_cityscapes")
    per_proposal = b5.roi.box_roi_size ** 2 * b5.fpn_channels
    assert b5.rpn.post_nms_top_n_test * per_proposal * 10 < MAX_ROI_VALUES
    config_from_dict(_small_with(rpn__post_nms_top_n_test=10_000))  # 10000 x 7² x 64 fits


def test_values_at_the_edges_of_their_ranges_are_accepted():
    data = _small_with(size_divisor=64, fpn_channels=1024, fusion__max_instances=999, pixel_mean=[0, 0, 255])
    config = config_from_dict(data)
    assert (config.size_divisor, config.fpn_channels, config.fusion.max_instances) == (64, 1024, 999)
    assert config.pixel_mean == (0.0, 0.0, 255.0)


def test_a_class_entry_with_a_missing_key_is_named():
    data = _small_with()
    del data["classes"][3]["color"]
    with pytest.raises(ValueError, match=re.escape("config.classes[3]: missing keys ['color']")):
        config_from_dict(data)


def test_a_preset_that_is_no_name_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        config_from_dict({"preset": ["small"]})


# --- nesting ------------------------------------------------------------------

def test_yaml_aliases_are_refused_before_they_multiply(tmp_path):
    # Nine levels of nine aliases each: 700 bytes that stand for 9^9 nodes.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(f"{path}: a YAML alias (*a0); aliases are not allowed")):
        load_config(path)
    assert time.monotonic() - start < 5


def test_a_config_file_too_large_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as sparse:
        sparse.truncate(3 * 2**30)
    with pytest.raises(ValueError, match=re.escape(f"{path}: larger than 4,000,000 bytes, the most read")):
        load_config(path)


def test_deeply_nested_yaml_is_refused_with_a_message(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("fusion: " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=re.escape(f"{path}: nested more than {MAX_NESTING} levels deep")):
        load_config(path)


def test_nesting_just_past_the_limit_is_refused_by_the_walk(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("fusion: " + "[" * MAX_NESTING + "]" * MAX_NESTING)
    with pytest.raises(ValueError, match="nested more than"):
        load_config(path)


def test_a_deep_mapping_built_in_code_is_refused():
    data = {}
    for _ in range(100_000):
        data = {"fusion": data}
    with pytest.raises(ValueError, match="config: nested more than"):
        config_from_dict(data)


# --- configs built in code and the model's size ---------------------------------

def test_build_model_refuses_a_config_built_in_code_by_field():
    config = dataclasses.replace(load_config("small"), size_divisor=0)
    with pytest.raises(ValueError, match=re.escape("config.size_divisor: 0 is out of range")):
        build_model(config)
    with pytest.raises(ValueError, match=re.escape("config.fusion.max_instances: 0 is out of range")):
        check_config(dataclasses.replace(config, size_divisor=32, fusion=FusionConfig(max_instances=0)))


def test_parameter_count_is_exact_for_the_papers_model():
    assert parameter_count(load_config("b5_cityscapes")) == 42_988_744


def test_an_oversized_network_is_refused_before_any_weight_is_allocated(monkeypatch):
    small = load_config("small")
    config = dataclasses.replace(
        small,
        fpn_channels=1024,
        semantic_channels=1024,
        backbone=BackboneConfig(name="tf_efficientnet_b8"),
        roi=dataclasses.replace(small.roi, box_fc_channels=4096, mask_channels=1024),
    )
    devices = []
    original = torch.nn.Module.register_parameter

    def recording(self, name, param):
        if param is not None:
            devices.append(param.device.type)
        return original(self, name, param)

    monkeypatch.setattr(torch.nn.Module, "register_parameter", recording)
    model._parameter_count.cache_clear()
    with pytest.raises(ValueError, match=r"config 'small': the network would have [\d,]+ parameters; allowed: at most 150,000,000"):
        build_model(config)
    assert devices and set(devices) == {"meta"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("256x", "expected HEIGHTxWIDTH"),
        ("16x512", "both sides must be at least 32"),
        ("32x100000", "an aspect ratio beyond 16:1"),
        ("100000x100000", "10000000000 pixels; allowed: at most 67108864 (8192x8192)"),
    ],
)
def test_image_sizes_beyond_what_a_camera_gives_are_refused(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(text)


def test_image_sizes_at_the_limits_are_accepted():
    assert parse_size("256x512") == (256, 512)
    assert parse_size("32x512") == (32, 512)
    assert parse_size("8192x8192") == (8192, 8192)
