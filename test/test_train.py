"""The training loop: schedule, seeds, an overfit check, and checkpoints the predictor loads."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.data.targets import collate
from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.checkpoint import load_checkpoint
from efficientps_ros.predictor import Predictor
from efficientps_ros.train import (
    VAL_SEED_BASE,
    best_path,
    lr_factor,
    main,
    make_optimizer,
    step_size,
    train,
    train_seeds,
    train_step,
    val_seeds,
)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_lr_rises_through_the_warm_up_then_decays_to_zero():
    factors = [lr_factor(step, 100, 10) for step in range(101)]
    assert factors[0] == pytest.approx(1 / 3)
    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))
    assert factors[10] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[55] == pytest.approx(0.5)
    assert factors[100] == pytest.approx(0.0)


def test_training_seeds_are_new_every_step_and_never_validation_seeds():
    seen = [s for step in range(50) for s in train_seeds(seed=3, step=step, batch_size=4)]
    assert len(set(seen)) == len(seen) == 200
    assert max(seen) < VAL_SEED_BASE and not set(seen) & set(val_seeds(8))
    assert not set(seen) & set(s for step in range(50) for s in train_seeds(seed=4, step=step, batch_size=4))


def test_step_sizes_are_multiples_of_the_divisor():
    assert step_size((256, 512), 1.0, 32) == (256, 512)
    assert step_size((256, 512), 0.75, 32) == (192, 384)
    assert step_size((100, 200), 1.3, 32) == (128, 256)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    config = load_config("small")
    model = build_model(config).train()
    batch = collate([street_scene(64, 128, seed=s) for s in (1, 2)], config)
    optimizer, _ = make_optimizer(model, lr=0.05, steps=8, warmup=1)
    losses = [train_step(model, optimizer, batch, torch.device("cpu"), clip=50.0) for _ in range(8)]
    assert all(np.isfinite(v["loss"]) for v in losses)
    assert np.mean([v["loss"] for v in losses[-3:]]) < 0.8 * losses[0]["loss"]
    assert losses[-1]["loss_semantic"] < 0.9 * losses[0]["loss_semantic"]
    assert losses[-1]["loss_cls"] < 0.5 * losses[0]["loss_cls"]


def test_train_writes_checkpoints_the_predictor_loads(tmp_path):
    out = tmp_path / "tiny.safetensors"
    result = train("small", steps=2, batch_size=1, image_size=(64, 128), lr=0.01, out=out, device="cpu", val_count=1)
    assert out.is_file() and result.best_checkpoint == best_path(out) and best_path(out).is_file()
    assert [h["step"] for h in result.history] == [2]
    predictor = Predictor(checkpoint=out, device="cpu")
    state = build_model(predictor.config).state_dict()
    with safe_open(str(out), framework="pt") as handle:
        assert set(handle.keys()) == set(state)
    scene = street_scene(64, 128, seed=VAL_SEED_BASE)
    result = predictor.predict(scene.image)
    assert result.semantic.shape == (64, 128) and result.instance.shape == (64, 128)


def test_training_can_start_from_a_checkpoint(tmp_path):
    first = tmp_path / "first.safetensors"
    train("small", steps=1, batch_size=1, image_size=(64, 128), lr=0.01, out=first, device="cpu", val_count=1)
    # With a zero learning rate the weights stay those of the starting checkpoint.
    second = tmp_path / "second.safetensors"
    train("small", steps=1, batch_size=1, image_size=(64, 128), lr=0.0, out=second, device="cpu", val_count=1, init=first)
    start, _ = load_checkpoint(first)
    end, _ = load_checkpoint(second)
    fresh = build_model(load_config("small"))
    parameters = [name for name, _ in fresh.named_parameters()]
    assert all(torch.equal(start[name], end[name]) for name in parameters)
    assert not all(torch.equal(start[name], fresh.state_dict()[name]) for name in parameters)


def test_the_command_line_stores_half_precision_weights_that_load_into_fp32(tmp_path):
    out = tmp_path / "half.safetensors"
    argv = ["--steps", "1", "--batch-size", "1", "--image-size", "64x128", "--out", str(out), "--val-count", "1"]
    assert main([*argv, "--fp16", "--device", "cpu"]) == 0
    with safe_open(str(out), framework="pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    predictor = Predictor(checkpoint=out, device="cpu")
    assert all(p.dtype == torch.float32 for p in predictor.model.parameters())
    assert predictor.predict(street_scene(64, 128, seed=1).image).semantic.shape == (64, 128)
