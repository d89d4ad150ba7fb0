"""Training checkpoints: a complete round trip through safetensors and JSON, and refusals by name."""
import json

import pytest
import torch
from torch import nn

from efficientps_ros.distributed import DistContext
from efficientps_ros.model.checkpoint import CheckpointError
from efficientps_ros.training.state import (
    TrainingState,
    capture_rng,
    checkpoint_stem,
    load_training_state,
    prune_checkpoints,
    resolve_checkpoint,
    restore_rng,
    save_training_state,
)


def _setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    return model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def _steps(model, optimizer, scheduler, count):
    for _ in range(count):
        loss = model(torch.randn(5, 4)).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_a_saved_run_continues_exactly_as_one_that_never_stopped(tmp_path):
    model, optimizer, scheduler, scaler = _setup(0)
    _steps(model, optimizer, scheduler, 2)
    stem = checkpoint_stem(tmp_path, 2)
    rng = capture_rng(DistContext())
    save_training_state(stem, model, optimizer, scheduler, scaler, TrainingState(2, rng, {"history": [{"step": 2}]}))
    _steps(model, optimizer, scheduler, 2)  # the run goes on

    other, other_optimizer, other_scheduler, other_scaler = _setup(1)
    state = load_training_state(stem.with_suffix(".safetensors"), other, other_optimizer, other_scheduler, other_scaler)
    restore_rng(state.rng, DistContext())
    assert state.iteration == 2 and state.info["history"] == [{"step": 2}]
    _steps(other, other_optimizer, other_scheduler, 2)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert other_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_the_files_are_json_and_safetensors_and_any_of_them_finds_the_checkpoint(tmp_path):
    model, optimizer, scheduler, scaler = _setup(0)
    _steps(model, optimizer, scheduler, 1)
    for iteration in (5, 10):
        save_training_state(checkpoint_stem(tmp_path, iteration), model, optimizer, scheduler, scaler,
                            TrainingState(iteration, capture_rng(DistContext())))
    meta = json.loads((tmp_path / "iter_0000010.json").read_text())
    assert meta["iteration"] == 10 and meta["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert (tmp_path / "iter_0000010.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    assert resolve_checkpoint(tmp_path) == tmp_path / "iter_0000010"
    assert resolve_checkpoint(tmp_path / "iter_0000005.safetensors") == tmp_path / "iter_0000005"


def test_pruning_keeps_the_newest_whole_checkpoints(tmp_path):
    model, optimizer, scheduler, scaler = _setup(0)
    for iteration in (5, 10, 100, 1000):
        save_training_state(checkpoint_stem(tmp_path, iteration), model, optimizer, scheduler, scaler,
                            TrainingState(iteration, capture_rng(DistContext())))
    (tmp_path / "iter_0002000.safetensors").write_bytes(b"half written")  # no JSON: not a checkpoint
    deleted = prune_checkpoints(tmp_path, 2)
    assert deleted == [tmp_path / "iter_0000005", tmp_path / "iter_0000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000100.json", "iter_0000100.safetensors", "iter_0001000.json", "iter_0001000.safetensors",
        "iter_0002000.safetensors"]
    assert resolve_checkpoint(tmp_path) == tmp_path / "iter_0001000"
    assert prune_checkpoints(tmp_path, 0) == [] and prune_checkpoints(tmp_path, 5) == []


def test_broken_checkpoints_are_refused_by_name(tmp_path):
    model, optimizer, scheduler, scaler = _setup(0)
    stem = checkpoint_stem(tmp_path, 1)
    save_training_state(stem, model, optimizer, scheduler, scaler, TrainingState(1, capture_rng(DistContext())))
    wider = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    with pytest.raises(CheckpointError, match=r"does not fit the model: .*wrong shape: 0\.weight \(3, 4\) != \(5, 4\)"):
        load_training_state(stem, wider, *_setup(0)[1:])
    stem.with_suffix(".json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not an efficientps_ros training checkpoint"):
        load_training_state(stem, *_setup(0))
    stem.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="iter_0000001.safetensors: training checkpoint file not found"):
        resolve_checkpoint(stem.with_suffix(".json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        resolve_checkpoint(empty)
