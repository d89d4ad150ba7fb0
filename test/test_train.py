"""The training loop: schedule, seeds, an overfit check, checkpoints the predictor loads, exact resumption."""
import csv
import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.data.targets import Batch, collate
from efficientps_ros.model import build_model, load_config
from efficientps_ros.model.checkpoint import load_checkpoint, load_weights
from efficientps_ros.predictor import Predictor, default_checkpoint
from efficientps_ros.training.recipe import Recipe
from efficientps_ros import train as train_module
from efficientps_ros.train import (
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
    assert not set(seen) & set(val_seeds(8))
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
    optimizer, _ = make_optimizer(model, Recipe(lr=0.05, steps=8, warmup=1))
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
    scene = street_scene(64, 128, seed=val_seeds(1)[0])
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


def test_the_command_line_keeps_only_the_newest_training_checkpoints(tmp_path):
    out = tmp_path / "kept.safetensors"
    argv = ["--steps", "3", "--batch-size", "1", "--image-size", "64x128", "--out", str(out), "--val-count", "1",
            "--checkpoint-every", "1", "--keep-checkpoints", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    kept = sorted(p.name for p in (tmp_path / "kept.run" / "checkpoints").iterdir())
    assert kept == ["iter_0000002.json", "iter_0000002.safetensors", "iter_0000003.json", "iter_0000003.safetensors"]


# Four steps with a save after the second; validation only at the end.
_SHORT = dict(steps=4, batch_size=1, image_size=(64, 128), lr=0.01, device="cpu", val_count=1,
              checkpoint_every=2, progress=False, scales=(0.75, 1.0), photometric=True)


def _weights(path):
    return load_checkpoint(path)[0]


def _same(first, second):
    return [name for name in first if not torch.equal(first[name], second[name])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A four-step run, saving after steps 2 and 4."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("whole") / "whole.safetensors"
    return train("small", out, **_SHORT)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(uninterrupted, tmp_path):
    checkpoint = uninterrupted.work_dir / "checkpoints" / "iter_0000002.json"
    assert checkpoint.is_file() and checkpoint.with_suffix(".safetensors").is_file()
    resumed = train("small", tmp_path / "resumed.safetensors", resume=checkpoint, **_SHORT)
    assert resumed.iteration == 4
    whole = _weights(uninterrupted.checkpoint)
    assert _same(whole, _weights(tmp_path / "resumed.safetensors")) == []
    # The equality is not that of untrained weights.
    assert _same(whole, build_model(load_config("small")).state_dict())


def test_an_interrupted_run_saves_where_it_stopped_and_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
    calls = []
    real_step = train_module.train_step

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # Ctrl-C during the fourth step
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", interrupted_step)
    out = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train("small", out, **{**_SHORT, "checkpoint_every": 100})
    saved = sorted(p.name for p in (tmp_path / "cut.run" / "checkpoints").iterdir())
    assert saved == ["iter_0000003.json", "iter_0000003.safetensors"] and not out.exists()
    monkeypatch.setattr(train_module, "train_step", real_step)
    resumed = train("small", out, resume=tmp_path / "cut.run", **{**_SHORT, "checkpoint_every": 100})
    assert resumed.iteration == 4
    assert _same(_weights(uninterrupted.checkpoint), _weights(out)) == []
    # The CSV log goes on where it stopped: the resumed run appends to it.
    rows = (tmp_path / "cut.run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == ["4"]


def test_a_run_writes_logs_curves_and_a_summary(tmp_path):
    result = train("small", tmp_path / "logged.safetensors", **{**_SHORT, "log_every": 1, "val_every": 2})
    run = result.work_dir
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert {"loss", "loss_semantic", "loss_mask", "lr", "grad_norm", "data_time", "step_time"} <= set(header)
    validations = (run / "validation.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in validations[1:]] == ["2", "4"] and "pq" in validations[0]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [h["step"] for h in result.history] == [2, 4]
    best = max(result.history, key=lambda h: (h["pq"], h["miou"]))
    assert result.best_pq == best["pq"] and best_path(tmp_path / "logged.safetensors").is_file()


def test_bad_settings_are_refused_by_name(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.safetensors"), "--steps", "0"]) == 2
    assert "steps: expected an integer from 1 to" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.safetensors"), "--amp", "fp16", "--device", "cpu"]) == 2
    assert "amp 'fp16' needs a CUDA device" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.safetensors"), "--resume", str(tmp_path / "none.json")]) == 2
    assert "training checkpoint file not found" in capsys.readouterr().err


def test_backbone_weights_from_a_timm_file_start_the_run(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()
    path = tmp_path / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    out = tmp_path / "from_timm.safetensors"
    # A zero learning rate leaves the convs as they were loaded.
    train("small", out, backbone_weights=path, **{**_SHORT, "steps": 1, "lr": 0.0})
    weights = _weights(out)
    for key in ("conv_stem.weight", "blocks.4.2.conv_pw.weight", "conv_head.weight"):
        assert torch.equal(weights[f"backbone.{key}"], state[key])


def test_training_on_a_cityscapes_layout_dataset(tmp_path):
    from efficientps_ros.data.cityscapes_layout import DatasetWriter
    from efficientps_ros.model.config import CITYSCAPES_CLASSES

    root = tmp_path / "city"
    for split, count in (("train", 3), ("val", 2)):
        with DatasetWriter(root, split, CITYSCAPES_CLASSES) as writer:
            for index in range(count):
                scene = street_scene(96, 160, seed=100 * len(split) + index)
                writer.write(f"town_{index:06d}_000019", scene.image, scene.semantic, scene.instance, scene.crowd)
    out = tmp_path / "city.safetensors"
    argv = ["--data", str(root), "--steps", "2", "--batch-size", "2", "--crop-size", "64x128", "--val-count", "2",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert out.is_file()
    rows = (tmp_path / "city.run" / "validation.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("2,")
    # Two steps of two images from three: the second epoch has begun, as the sampler says.
    meta = (tmp_path / "city.run" / "checkpoints" / "iter_0000002.json").read_text()
    assert '"epoch": 1' in meta and '"offset": 1' in meta
    assert main([*argv[:1], str(tmp_path / "nowhere"), *argv[2:]]) == 2


def test_mixed_precision_and_the_grad_scaler_run_the_same_step():
    config = load_config("small")
    batch = collate([street_scene(64, 128, seed=3)], config)
    results = {}
    for mode in ("plain", "scaled", "bf16"):
        torch.manual_seed(0)
        model = build_model(config).train()
        optimizer, _ = make_optimizer(model, Recipe(lr=0.05, steps=4, warmup=0))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=mode == "scaled")
        values = train_step(model, optimizer, batch, torch.device("cpu"), 10.0, scaler, "bf16" if mode == "bf16" else "off")
        results[mode] = (values, model.state_dict())
    plain, scaled, half = results["plain"], results["scaled"], results["bf16"]
    # A power-of-two loss scale, undone before clipping, gives the same gradient norm and update.
    assert scaled[0]["grad_norm"] == pytest.approx(plain[0]["grad_norm"], rel=1e-5)
    for name, value in plain[1].items():
        torch.testing.assert_close(scaled[1][name], value, rtol=1e-5, atol=1e-7)
    # bf16 computes in lower precision, but the weights stay fp32 and the losses close.
    assert all(v.dtype == plain[1][k].dtype for k, v in half[1].items())
    assert half[0]["loss_semantic"] == pytest.approx(plain[0]["loss_semantic"], rel=0.05)


def test_a_channels_last_step_computes_the_contiguous_one():
    # From the packaged weights: an untrained network's gradients are large enough
    # for the order of float sums to show in them.
    weights, config = load_checkpoint(default_checkpoint(load_config("small")))
    batch = collate([street_scene(128, 256, seed=4), street_scene(128, 256, seed=5)], config)
    results = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = build_model(config)
        load_weights(model, weights, "packaged")
        model = model.train().to(memory_format=layout)
        optimizer, _ = make_optimizer(model, Recipe(lr=0.01, steps=4, warmup=0))
        values = train_step(model, optimizer, batch, torch.device("cpu"), 10.0, memory_format=layout)
        results[layout] = (values, model)
    (plain, plain_model), (nhwc, nhwc_model) = results[torch.contiguous_format], results[torch.channels_last]
    stem = nhwc_model.backbone.conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    for key in ("loss_semantic", "loss_cls", "loss_mask"):
        assert nhwc[key] == pytest.approx(plain[key], rel=1e-5), key
    # Measured: 6e-5 apart, and no weight more than 2e-5 after the step.
    assert nhwc["grad_norm"] == pytest.approx(plain["grad_norm"], rel=3e-4)
    for (name, a), b in zip(plain_model.state_dict().items(), nhwc_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)


def test_the_layout_is_a_recipe_setting_with_a_flag(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_module, "train_step", lambda *args: seen.append(args[8]) or dict(_FAKE_VALUES))
    argv = ["--steps", "1", "--batch-size", "1", "--image-size", "64x128", "--val-count", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main([*argv, "--no-channels-last", "--out", str(tmp_path / "b.safetensors")]) == 0
    assert seen == [torch.channels_last, torch.contiguous_format]
    assert Recipe().channels_last


_FAKE_VALUES = {"loss": 1.0, "grad_norm": 1.0, "loss_semantic": 1.0, "skipped": 0.0}


class _Toy(torch.nn.Module):
    """A network with batch-norm statistics whose loss or gradient a test can poison."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.poison_gradient = False

    def forward(self, images, sizes, targets):
        out = self.norm(self.conv(images))
        if self.poison_gradient:
            out.register_hook(lambda grad: torch.full_like(grad, math.nan))
        return {"loss_semantic": out.square().mean()}


def _toy_step(model, images):
    batch = Batch(images, [tuple(images.shape[-2:])] * len(images), [{}] * len(images))
    return train_step(model, model.optimizer, batch, torch.device("cpu"), 10.0)


def _toy():
    torch.manual_seed(0)
    model = _Toy().train()
    model.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _toy_step(model, torch.randn(2, 3, 8, 8))  # momentum buffers and moved statistics to guard
    return model


def _state(model):
    momenta = [model.optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    return {k: v.clone() for k, v in model.state_dict().items()}, momenta


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_changes_no_weight_statistic_or_momentum(poison):
    model = _toy()
    before, momenta = _state(model)
    images = torch.randn(2, 3, 8, 8)
    if poison == "loss":
        images[0, 0, 0, 0] = math.nan
    model.poison_gradient = poison == "gradient"
    values = _toy_step(model, images)
    assert values["skipped"] == 1.0
    after, after_momenta = _state(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert all(torch.equal(a, b) for a, b in zip(momenta, after_momenta))
    # The next good step is taken, and moves the weights and the statistics.
    model.poison_gradient = False
    assert _toy_step(model, torch.randn(2, 3, 8, 8))["skipped"] == 0.0
    assert not torch.equal(model.conv.weight, before["conv.weight"])
    assert not torch.equal(model.norm.running_mean, before["norm.running_mean"])


def _poisoning(monkeypatch, calls):
    """train_step, with NaN rows in the images on the calls numbered in `calls` (from 1)."""
    real_step, seen = train_module.train_step, []

    def step(model, optimizer, batch, *args, **kwargs):
        seen.append(1)
        if len(seen) in calls:
            images = batch.images.clone()
            images[:, :, :4] = math.nan  # as a diverged network's features: NaN boxes, NaN losses
            batch = Batch(images, batch.image_sizes, batch.targets)
        return real_step(model, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)


def test_a_run_skips_a_non_finite_step_logs_it_and_goes_on(tmp_path, monkeypatch, caplog):
    _poisoning(monkeypatch, {2})
    out = tmp_path / "skip.safetensors"
    with caplog.at_level(logging.WARNING, logger=train_module.log.name):
        result = train("small", out, **{**_SHORT, "log_every": 2})
    assert result.iteration == 4
    assert [r.message for r in caplog.records if "skipped" in r.message][0].startswith("step 2 skipped")
    rows = list(csv.DictReader((result.work_dir / "metrics.csv").open()))
    assert [float(r["skipped"]) for r in rows] == [1.0, 0.0]
    assert math.isfinite(float(rows[0]["loss"]))  # the mean of the step taken
    assert json.loads((result.work_dir / "summary.json").read_text())["skipped_steps"] == 1
    assert all(torch.isfinite(w).all() for w in _weights(out).values())


def test_too_many_non_finite_steps_in_a_row_stop_the_run_by_name(tmp_path, monkeypatch, capsys):
    _poisoning(monkeypatch, {1, 2, 3})
    argv = ["--steps", "4", "--batch-size", "1", "--image-size", "64x128", "--val-count", "1", "--device", "cpu",
            "--max-skipped-steps", "2", "--no-progress", "--out", str(tmp_path / "bad.safetensors")]
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert "3 steps in a row up to step 3" in message and "max_skipped_steps 2" in message


@pytest.fixture
def no_model(monkeypatch):
    """Fails a test that builds a network: refusals must come before any training work."""
    monkeypatch.setattr(train_module, "build_model", lambda *a, **k: pytest.fail("a model was built"))


def _refused(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unwritable_outputs_are_refused_before_any_training(tmp_path, capsys, no_model):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    base = ["--steps", "1", "--device", "cpu"]
    err = _refused([*base, "--out", str(afile / "w.safetensors")], capsys)
    assert f"the directory of the output checkpoint {afile / 'w.safetensors'}, {afile}, is a file" in err
    err = _refused([*base, "--out", str(tmp_path / "w.safetensors"), "--work-dir", str(afile)], capsys)
    assert f"the run directory, {afile}, is a file, not a directory" in err
    err = _refused([*base, "--out", str(afile / "deeper" / "w.safetensors")], capsys)
    assert "cannot be made: Not a directory" in err
    (tmp_path / "dir.safetensors").mkdir()
    err = _refused([*base, "--out", str(tmp_path / "dir.safetensors")], capsys)
    assert f"{tmp_path / 'dir.safetensors'} is a directory; give the file to write" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_os_error_during_the_run_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "w.safetensors"))

    monkeypatch.setattr(train_module, "train", full_disk)
    assert main(["--out", str(tmp_path / "w.safetensors")]) == 1
    expected = f"efficientps train: [Errno 28] No space left on device: '{tmp_path / 'w.safetensors'}'\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("count", ["-1", "0", "100000", "two"])
def test_the_thread_count_is_refused_unless_positive(tmp_path, capsys, count):
    with pytest.raises(SystemExit) as raised:
        main(["--out", str(tmp_path / "w.safetensors"), "--threads", count])
    assert raised.value.code == 2 and "argument --threads: expected" in capsys.readouterr().err


def test_a_class_table_of_its_own_needs_a_dataset(tmp_path, capsys, no_model):
    config = tmp_path / "three.yaml"
    config.write_text(
        "preset: small\nclasses:\n"
        "  - {train_id: 0, label_id: 7, name: road, color: [128, 64, 128], is_thing: false}\n"
        "  - {train_id: 1, label_id: 11, name: building, color: [70, 70, 70], is_thing: false}\n"
        "  - {train_id: 2, label_id: 26, name: car, color: [0, 0, 142], is_thing: true}\n"
    )
    err = _refused(["--out", str(tmp_path / "w.safetensors"), "--preset", str(config), "--device", "cpu"], capsys)
    assert "own class table (3 classes)" in err and "needs the Cityscapes class table" in err


def test_a_split_without_images_is_refused_before_training(tmp_path, monkeypatch, capsys, no_model):
    import efficientps_ros.data.datasets as datasets

    class Listed(list):
        """A dataset whose val split lists nothing, however the datasets module treats that itself."""

        def __init__(self, root, split, classes):
            super().__init__([] if split == "val" else [None])

    monkeypatch.setattr(datasets, "PanopticDataset", Listed)
    err = _refused(["--out", str(tmp_path / "w.safetensors"), "--data", str(tmp_path), "--device", "cpu"], capsys)
    assert f"dataset {tmp_path}: the val split lists no images" in err


def test_undefined_validation_scores_are_null_in_the_json_and_never_best(tmp_path, monkeypatch):
    undefined = dict.fromkeys(("pq", "sq", "rq", "pq_things", "pq_stuff", "miou"), math.nan)
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: dict(undefined))
    out = tmp_path / "nan.safetensors"
    result = train("small", out, **{**_SHORT, "steps": 2, "val_every": 1})
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} in the JSON")}
    summary = json.loads((result.work_dir / "summary.json").read_text(), **strict)
    assert summary["best"] is None and not best_path(out).exists() and result.best_checkpoint is None
    # The checkpoint of step 2 is written before that step's validation.
    meta = json.loads((result.work_dir / "checkpoints" / "iter_0000002.json").read_text(), **strict)
    assert meta["history"] == [{"step": 1, **dict.fromkeys(undefined)}] and meta["best"] is None


def test_resuming_a_finished_run_is_refused_naming_both_steps(uninterrupted, tmp_path, capsys, no_model):
    checkpoint = uninterrupted.work_dir / "checkpoints" / "iter_0000004.json"
    err = _refused(["--resume", str(checkpoint), "--out", str(tmp_path / "w.safetensors"), "--device", "cpu"], capsys)
    assert f"training checkpoint {checkpoint} is at step 4, and the run has 4 steps: nothing is left to train" in err
    assert "--steps above 4" in err and not (tmp_path / "w.safetensors").exists()


def test_resuming_past_the_validations_a_run_may_keep_is_refused(uninterrupted, tmp_path, capsys, no_model):
    source = uninterrupted.work_dir / "checkpoints" / "iter_0000002"
    meta = json.loads(source.with_suffix(".json").read_text())
    meta["history"] = [{"step": 1, "pq": 0.5}] * 99_999
    (tmp_path / "iter_0000002.json").write_text(json.dumps(meta))
    (tmp_path / "iter_0000002.safetensors").symlink_to(source.with_suffix(".safetensors"))
    argv = ["--resume", str(tmp_path / "iter_0000002.json"), "--out", str(tmp_path / "w.safetensors")]
    err = _refused([*argv, "--val-every", "1"], capsys)
    assert "holds 99,999 validations, and val_every 1 up to step 4 adds 2; allowed: at most 100,000" in err


def test_a_checkpoint_without_its_recipe_is_refused_by_name(uninterrupted, tmp_path, capsys, no_model):
    source = uninterrupted.work_dir / "checkpoints" / "iter_0000002"
    meta = json.loads(source.with_suffix(".json").read_text())
    del meta["recipe"]
    (tmp_path / "iter_0000002.json").write_text(json.dumps(meta))
    (tmp_path / "iter_0000002.safetensors").symlink_to(source.with_suffix(".safetensors"))
    err = _refused(["--resume", str(tmp_path / "iter_0000002.json"), "--out", str(tmp_path / "w.safetensors")], capsys)
    assert "iter_0000002.json: its JSON has no 'recipe'" in err


def test_a_learning_rate_given_with_resume_is_the_one_used(uninterrupted, tmp_path, monkeypatch):
    rates, real_step = [], train_module.train_step

    def step(model, optimizer, *args, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step)
    checkpoint = uninterrupted.work_dir / "checkpoints" / "iter_0000002.json"
    settings = {**_SHORT, "steps": 3, "lr": 0.5}
    train("small", tmp_path / "faster.safetensors", resume=checkpoint, **settings)
    recipe = Recipe(**{k: v for k, v in settings.items() if k not in ("device", "progress")})
    assert rates == [pytest.approx(0.5 * train_module.recipe_lr_factor(recipe, 2))]
