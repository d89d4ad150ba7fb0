import json

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
