"""Training checkpoints: a complete round trip through safetensors and JSON, and refusals by name."""
import json

import pytest
import torch
from torch import nn

from efficientps_ros.distributed import DistContext
from efficientps_ros.model.checkpoint import CheckpointError
from efficientps_ros.training import state as state_module
from efficientps_ros.training.state import (
    TrainingState,
    capture_rng,
    checkpoint_stem,
    load_training_state,
    prune_checkpoints,
    read_training_info,
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


def _saved(tmp_path, info=None):
    model, optimizer, scheduler, scaler = _setup(0)
    _steps(model, optimizer, scheduler, 1)
    stem = checkpoint_stem(tmp_path, 1)
    state = TrainingState(1, capture_rng(DistContext()), info or {})
    save_training_state(stem, model, optimizer, scheduler, scaler, state)
    return stem


def _edit(stem, **changes):
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta.update(changes)
    stem.with_suffix(".json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iteration": -5}, "iteration: expected an integer from 0 to 1,000,000,000, got -5"),
        ({"iteration": "5"}, "iteration: expected an integer .*, got '5'"),
        ({"ranks": 0}, "ranks: expected an integer of at least 1, got 0"),
        ({"optimizer": [1, 2]}, "optimizer: expected a mapping, got a list of 2"),
        ({"optimizer": {"param_groups": 3, "state": {}}}, "optimizer.param_groups: expected a list of mappings"),
        ({"scheduler": None}, "scheduler: expected a mapping, got None"),
        ({"recipe": [1]}, "recipe: expected a mapping, got a list of 1"),
        ({"config": "small"}, "config: expected a mapping, got 'small'"),
        ({"history": [{"step": 2, "pq": "high"}]}, "history: expected a list of validation scores"),
        ({"best": 3}, "best: expected validation scores or null, got 3"),
        ({"skipped_steps": -1}, "skipped_steps: expected an integer from 0"),
    ],
)
def test_malformed_fields_of_the_json_are_refused_by_name(tmp_path, changes, message):
    stem = _saved(tmp_path)
    _edit(stem, **changes)
    with pytest.raises(CheckpointError, match=f"iter_0000001.json: {message}"):
        read_training_info(stem)


def test_a_missing_field_and_a_deeply_nested_json_are_refused_by_name(tmp_path):
    stem = _saved(tmp_path)
    meta = json.loads(stem.with_suffix(".json").read_text())
    del meta["iteration"]
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="iteration: expected an integer .*, got nothing"):
        read_training_info(stem)
    deep = "[" * 100000 + "]" * 100000
    stem.with_suffix(".json").write_text('{"format": "efficientps_ros/train-state/1", "x": ' + deep + "}")
    with pytest.raises(CheckpointError, match="iter_0000001.json: nested more than 32 levels deep"):
        read_training_info(stem)


def test_the_process_count_must_be_that_of_the_generator_states_stored(tmp_path, monkeypatch):
    stem = _saved(tmp_path)
    _edit(stem, ranks=10_000_000_000)

    def never(*args):
        # Nothing of the claimed size may be built: a list over it would take minutes and gigabytes.
        pytest.fail("a range was built before the check")

    monkeypatch.setattr(state_module, "range", never, raising=False)
    with pytest.raises(CheckpointError, match="the JSON says 10000000000 processes, but the generator states stored "
                                              "are those of 1 \\(ranks \\[0\\]\\)"):
        load_training_state(stem, *_setup(0))


def test_a_generator_state_of_another_kind_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    stem = _saved(tmp_path)
    tensors = load_file(str(stem.with_suffix(".safetensors")))
    tensors["rng/0/torch"] = torch.zeros(3, dtype=torch.float32)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    with pytest.raises(CheckpointError, match="rng/0/torch: expected a generator state"):
        load_training_state(stem, *_setup(0))


def test_a_scheduler_state_sets_only_the_schedulers_own_fields(tmp_path):
    stem = _saved(tmp_path)
    meta = json.loads(stem.with_suffix(".json").read_text())
    _edit(stem, scheduler={**meta["scheduler"], "optimizer": None, "verbose": False})
    model, optimizer, scheduler, scaler = _setup(1)
    load_training_state(stem, model, optimizer, scheduler, scaler)
    assert scheduler.optimizer is optimizer and scheduler.last_epoch == 1
    _edit(stem, scheduler={**meta["scheduler"], "last_epoch": "one"})
    with pytest.raises(CheckpointError, match="scheduler.last_epoch: expected a number, got 'one'"):
        load_training_state(stem, *_setup(1))


def test_an_optimizer_state_of_another_shape_is_refused_by_name(tmp_path):
    stem = _saved(tmp_path)
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["optimizer"]["param_groups"] = meta["optimizer"]["param_groups"] * 2
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="iter_0000001: the optimizer state does not fit this run"):
        load_training_state(stem, *_setup(0))


def test_undefined_scores_are_written_as_null(tmp_path):
    nan = float("nan")
    stem = _saved(tmp_path, {"history": [{"step": 1, "pq": nan, "miou": 0.5}], "best": {"step": 1, "pq": nan}})
    text = stem.with_suffix(".json").read_text()
    meta = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert meta["history"] == [{"step": 1, "pq": None, "miou": 0.5}] and meta["best"] == {"step": 1, "pq": None}
    assert read_training_info(stem)["best"] == {"step": 1, "pq": None}


def test_a_run_validating_as_often_as_a_recipe_allows_still_resumes(tmp_path):
    """Every validation's scores stay in the checkpoint; the longest history a recipe allows must read back."""
    from efficientps_ros.training.recipe import MAX_STEPS, MAX_VALIDATIONS
    from efficientps_ros.training.validation import KEYS

    widest = -1.2345678901234567e-05  # as long as a float repr gets
    row = {"step": MAX_STEPS, **dict.fromkeys(KEYS, widest)}
    stem = _saved(tmp_path, {"history": [row] * MAX_VALIDATIONS, "best": row})
    assert stem.with_suffix(".json").stat().st_size > 200 * MAX_VALIDATIONS
    assert len(read_training_info(stem)["history"]) == MAX_VALIDATIONS


def test_a_checkpoint_json_past_the_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    stem = _saved(tmp_path)
    size = stem.with_suffix(".json").stat().st_size
    monkeypatch.setattr(state_module, "MAX_INFO_CHARS", size - 1)
    with pytest.raises(CheckpointError, match=f"iter_0000001.json: larger than {size - 1:,} bytes"):
        read_training_info(stem)
