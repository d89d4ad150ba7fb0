import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from efficientps_ros.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_config,
    save_checkpoint,
)
from efficientps_ros.model.config import load_config
from efficientps_ros.model.fpn import TwoWayFPN


def _module(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = TwoWayFPN([8, 16, 24, 32], 16)
    for buffer in module.buffers():
        buffer.copy_(torch.randint_like(buffer, 1, 100) if buffer.dtype == torch.long else torch.rand_like(buffer))
    return module


def test_round_trip_is_bit_exact_and_keeps_the_config(tmp_path):
    module = _module()
    config = load_config("small")
    path = save_checkpoint(module, config, tmp_path / "ckpt.safetensors")

    state, stored = load_checkpoint(path)
    assert stored == config
    original = module.state_dict()
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert state[key].dtype == value.dtype
        assert torch.equal(state[key], value), key

    other = _module(seed=1)
    load_weights(other, state, path)
    for key, value in other.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.safetensors: checkpoint file not found"):
        load_checkpoint(tmp_path / "nowhere.safetensors")


def test_a_directory_or_a_fifo_is_named_as_no_regular_file(tmp_path):
    directory = tmp_path / "dir.safetensors"
    directory.mkdir()
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for path in (directory, fifo):
        # A FIFO opened for reading would block until a writer came.
        with pytest.raises(CheckpointError, match=f"{path.name}: not a regular file"):
            load_checkpoint(path)


def test_corrupt_file_is_refused(tmp_path):
    path = save_checkpoint(_module(), load_config("small"), tmp_path / "ckpt.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.safetensors"):
        load_checkpoint(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors_without_config_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an efficientps_ros checkpoint"):
        read_config(path)


def test_stored_config_that_is_invalid_is_refused(tmp_path):
    path = tmp_path / "bad_config.safetensors"
    bad = load_config("small").to_dict() | {"fpn_channels": "wide"}
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "efficientps_ros/1", "config": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="stored config is invalid.*fpn_channels"):
        read_config(path)


def test_mismatch_lists_missing_unexpected_and_reshaped_by_name(tmp_path):
    module = _module()
    state = dict(module.state_dict())
    del state["fpn_convs.0.conv.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["lateral_convs_top.1.conv.weight"] = torch.zeros(16, 15, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_weights(module, state, "x.safetensors")
    message = str(info.value)
    assert message.startswith("x.safetensors: does not fit the model")
    assert "1 missing: fpn_convs.0.conv.weight" in message
    assert "1 unexpected: extra.weight" in message
    assert "lateral_convs_top.1.conv.weight (16, 15, 1, 1) != (16, 16, 1, 1)" in message


def test_fp16_storage_halves_floats_and_loads_into_the_fp32_model(tmp_path):
    module = _module()
    path = save_checkpoint(module, load_config("small"), tmp_path / "half.safetensors", dtype=torch.float16)
    state, _ = load_checkpoint(path)
    original = module.state_dict()
    for key, value in state.items():
        expected = torch.float16 if original[key].is_floating_point() else original[key].dtype
        assert value.dtype == expected, key
    other = _module(seed=1)
    load_weights(other, state, path)
    for key, value in other.state_dict().items():
        assert value.dtype == original[key].dtype
        torch.testing.assert_close(value, original[key], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "dtype, problem",
    [
        (torch.float64, "fpn_convs.0.conv.weight float64 (allowed: float32, float16, bfloat16)"),
        (torch.int32, "fpn_convs.0.conv.weight int32 (allowed: float32, float16, bfloat16)"),
        (torch.bool, "fpn_convs.0.conv.weight bool (allowed: float32, float16, bfloat16)"),
    ],
)
def test_a_tensor_of_the_wrong_dtype_is_refused_by_name(tmp_path, dtype, problem):
    module = _module()
    path = save_checkpoint(module, load_config("small"), tmp_path / "ckpt.safetensors")
    state, _ = load_checkpoint(path)
    state["fpn_convs.0.conv.weight"] = state["fpn_convs.0.conv.weight"].to(dtype)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: does not fit the model: 1 wrong dtype: {problem}")):
        load_weights(_module(seed=1), state, path)


def test_a_counter_of_another_integer_type_is_refused():
    module = _module()
    counter = next(k for k, v in module.state_dict().items() if v.dtype == torch.long)
    state = dict(module.state_dict())
    state[counter] = state[counter].to(torch.int32)
    with pytest.raises(CheckpointError, match=re.escape(f"1 wrong dtype: {counter} int32 (allowed: int64)")):
        load_weights(_module(seed=1), state, "x.safetensors")


@pytest.mark.parametrize("values, count", [([float("nan")], "1 NaN, 0 Inf"), ([float("inf"), -float("inf")], "0 NaN, 2 Inf")])
def test_non_finite_weights_are_refused_by_name(values, count):
    module = _module()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    weight = state["lateral_convs_top.1.conv.weight"]
    weight.view(-1)[: len(values)] = torch.tensor(values)
    target = _module(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape(f"1 non-finite: lateral_convs_top.1.conv.weight ({count})")):
        load_weights(target, state, "x.safetensors")
    # Refused before anything was copied.
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_a_nan_weight_in_a_stored_checkpoint_is_refused_on_load(tmp_path):
    module = _module()
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] = float("nan")
    path = save_checkpoint(module, load_config("small"), tmp_path / "nan.safetensors", dtype=torch.float16)
    state, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"nan.safetensors: does not fit the model: 1 non-finite: .*1 NaN"):
        load_weights(_module(seed=1), state, path)


def _with_stored_config(path, config_text: str):
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "efficientps_ros/1", "config": config_text})
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"size_divisor": 0}, "size_divisor: 0 is out of range; allowed: 32 to 1024, a multiple of 32"),
        ({"fpn_channels": 1_000_000}, "fpn_channels: 1000000 is out of range; allowed: 1 to 1024"),
        ({"pixel_std": [0, 0, 0]}, "pixel_std[0]: 0 is out of range"),
        ({"backbone": {"name": "hf-hub:timm/efficientnet_b0.ra_in1k"}},
         "backbone.name: 'hf-hub:timm/efficientnet_b0.ra_in1k' is not allowed"),
    ],
)
def test_an_embedded_config_out_of_range_is_refused_by_field(tmp_path, change, message):
    data = load_config("small").to_dict()
    for key, value in change.items():
        data[key] = data[key] | value if isinstance(value, dict) else value
    path = _with_stored_config(tmp_path / "bad.safetensors", json.dumps(data))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: stored config is invalid ({path} config.{message}")):
        read_config(path)


def test_an_embedded_config_nested_100000_deep_is_refused_with_a_message(tmp_path):
    path = _with_stored_config(tmp_path / "deep.safetensors", '{"fusion": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match=r"deep.safetensors config: nested more than 32 levels deep"):
        read_config(path)


def test_an_embedded_config_that_is_not_json_is_refused(tmp_path):
    path = _with_stored_config(tmp_path / "text.safetensors", "{not json")
    with pytest.raises(CheckpointError, match="stored config is invalid .*not valid JSON"):
        read_config(path)
