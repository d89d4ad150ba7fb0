"""Averaging the weights of checkpoints: the mean, from training or inference files, and refusals by name."""
from dataclasses import replace

import pytest
import torch

from efficientps_ros.cli import main
from efficientps_ros.distributed import DistContext
from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from efficientps_ros.predictor import Predictor
from efficientps_ros.training.averaging import average_weights
from efficientps_ros.training.state import TrainingState, capture_rng, checkpoint_stem, save_training_state

CONFIG = load_config("small")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return [build_model(CONFIG) for _ in range(3)]


def _training_checkpoint(model, directory, iteration):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainingState(iteration, capture_rng(DistContext()), {"config": CONFIG.to_dict()})
    return save_training_state(checkpoint_stem(directory, iteration), model, optimizer, scheduler,
                               torch.amp.GradScaler("cpu", enabled=False), state)


def test_the_mean_of_training_and_inference_checkpoints(models, tmp_path):
    last = build_model(CONFIG)
    last.load_state_dict(models[2].state_dict())
    last.backbone.bn1.num_batches_tracked.fill_(5)
    paths = [_training_checkpoint(models[0], tmp_path, 10), _training_checkpoint(models[1], tmp_path, 20),
             save_checkpoint(last, CONFIG, tmp_path / "third.safetensors")]
    mean, config = average_weights(paths)
    assert config == CONFIG
    states = [m.state_dict() for m in (*models[:2], last)]
    assert mean["backbone.bn1.num_batches_tracked"] == 5
    for key, value in mean.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            expected = sum(s[key].double() for s in states) / 3
            torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, states[2][key])  # step counters: the last one's
    weight = "semantic_head.conv_logits.weight"
    assert not torch.equal(mean[weight], states[0][weight])  # the mean of different weights


def test_the_command_writes_a_checkpoint_the_predictor_loads(models, tmp_path, capsys):
    first = save_checkpoint(models[0], CONFIG, tmp_path / "a.safetensors")
    second = _training_checkpoint(models[1], tmp_path, 7).with_suffix(".safetensors")
    out = tmp_path / "mean.safetensors"
    assert main(["average", str(first), str(second), "--out", str(out), "--fp16"]) == 0
    assert "the mean of 2 checkpoints" in capsys.readouterr().out
    state, config = load_checkpoint(out)
    assert config == CONFIG and state["semantic_head.conv_logits.weight"].dtype == torch.float16
    predictor = Predictor(checkpoint=out, device="cpu")
    expected = (models[0].state_dict()["semantic_head.conv_logits.weight"]
                + models[1].state_dict()["semantic_head.conv_logits.weight"]) / 2
    torch.testing.assert_close(predictor.model.semantic_head.conv_logits.weight, expected, rtol=1e-3, atol=1e-3)


def test_checkpoints_of_different_models_are_refused_by_name(models, tmp_path, capsys):
    first = save_checkpoint(models[0], CONFIG, tmp_path / "a.safetensors")
    other = replace(CONFIG, fusion=replace(CONFIG.fusion, min_stuff_area=64))
    second = save_checkpoint(models[1], other, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="b.safetensors: its config differs"):
        average_weights([first, second])
    state = dict(models[1].state_dict())
    state["semantic_head.conv_logits.weight"] = torch.full_like(state["semantic_head.conv_logits.weight"], float("nan"))
    poisoned = build_model(CONFIG)
    poisoned.load_state_dict(state)
    broken = save_checkpoint(poisoned, CONFIG, tmp_path / "nan.safetensors")
    refusal = "nan.safetensors, against .*a.safetensors: 1 non-finite: semantic_head.conv_logits.weight"
    with pytest.raises(CheckpointError, match=refusal):
        average_weights([first, broken])
    assert main(["average", str(first), str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_weights_that_do_not_fit_their_own_config_are_refused_by_name(models, tmp_path, capsys):
    # Both files agree with each other, so only building the model they name shows the misfit.
    wider = replace(CONFIG, fpn_channels=CONFIG.fpn_channels * 2)
    paths = [save_checkpoint(m, wider, tmp_path / f"{i}.safetensors") for i, m in enumerate(models[:2])]
    out = tmp_path / "mean.safetensors"
    assert main(["average", *map(str, paths), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "0.safetensors: does not fit the model" in err and "Traceback" not in err
    assert not out.exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_checkpoint_is_read(tmp_path, capsys, monkeypatch):
    import efficientps_ros.training.averaging as averaging

    monkeypatch.setattr(averaging, "read_weights", lambda path: pytest.fail("a checkpoint was read"))
    folder = tmp_path / "adir"
    folder.mkdir()
    for out, message in ((folder, f"output checkpoint {folder}: {folder} is a directory; give the file to write"),
                         ("/proc/x.safetensors", "the directory of the output checkpoint /proc/x.safetensors, /proc, "
                                                 "takes no new files")):
        assert main(["average", str(tmp_path / "a.safetensors"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(folder.iterdir()) == []


def test_a_file_that_is_no_checkpoint_is_refused_by_the_name_given(tmp_path, capsys):
    text = tmp_path / "text.png"
    text.write_text("not a checkpoint")
    out = tmp_path / "x.safetensors"
    for given, what in ((text, "not a checkpoint"), (tmp_path / "gone.png", "not found")):
        assert main(["average", str(given), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"efficientps average: {given}: {what}") and ".json" not in err.split(";")[0]
        assert "Traceback" not in err
    assert not out.exists()
