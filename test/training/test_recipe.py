"""Recipes: the authors' one as their config states it, strict YAML, and the learning-rate schedules."""
from pathlib import Path

import pytest

from efficientps_ros.training.recipe import Recipe, load_recipe, lr_factor, recipe_lr_factor, validations

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_the_authors_recipe_holds_their_config_values():
    recipe = load_recipe(CONFIG / "train_b5_cityscapes.yaml")
    assert recipe.preset == "b5_cityscapes" and recipe.batch_size == 1
    assert (recipe.lr, recipe.momentum, recipe.weight_decay, recipe.clip) == (0.07, 0.9, 1e-4, 35.0)
    assert (recipe.schedule, recipe.warmup, recipe.warmup_ratio) == ("step", 500, pytest.approx(1 / 3))
    # 160 epochs of 186 steps, drops after epochs 120 and 144.
    assert (recipe.steps, recipe.milestones, recipe.gamma) == (160 * 186, (120 * 186, 144 * 186), 0.1)
    assert recipe.crop_size == (1024, 2048) and recipe.scale_range == (0.5, 2.0) and recipe.flip_probability == 0.5
    assert set(recipe.loss_weights.values()) == {1.0} and len(recipe.loss_weights) == 6


def test_the_step_schedule_warms_up_from_a_third_then_drops_tenfold_at_each_milestone():
    recipe = load_recipe(CONFIG / "train_b5_cityscapes.yaml")
    assert recipe_lr_factor(recipe, 0) == pytest.approx(1 / 3)
    assert recipe_lr_factor(recipe, 250) == pytest.approx(2 / 3)
    assert recipe_lr_factor(recipe, 500) == 1.0 and recipe_lr_factor(recipe, 22319) == 1.0
    assert recipe_lr_factor(recipe, 22320) == pytest.approx(0.1)
    assert recipe_lr_factor(recipe, 26784) == pytest.approx(0.01)
    assert lr_factor(10, 100, 5, "step", milestones=(10, 20), gamma=0.5) == 0.5


def test_the_cpu_recipe_loads():
    recipe = load_recipe(CONFIG / "train_small_cpu.yaml")
    assert recipe.preset == "small" and recipe.schedule == "cosine" and recipe.photometric


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: 0.1\nlerning_rate: 3\n", "unknown keys \\['lerning_rate'\\]"),
        ("steps: many\n", "steps: expected a number, got 'many'"),
        ("steps: 2.5\n", "steps: expected an integer"),
        ("schedule: poly\n", "schedule: expected one of"),
        ("crop_size: [16, 2048]\n", "crop_size: expected \\[height, width\\]"),
        ("loss_weights: {loss_depth: 1.0}\n", "loss_weights: unknown terms \\['loss_depth'\\]"),
        ("milestones: [300, 100]\n", "milestones: expected increasing steps"),
        ("max_skipped_steps: -1\n", "max_skipped_steps: expected an integer from 0 to .*, got -1"),
        ("keep_checkpoints: -2\n", "keep_checkpoints: expected an integer from 0 to .*, got -2"),
        ("- a list\n", "expected a mapping at the top level"),
    ],
)
def test_a_bad_recipe_is_refused_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as raised:
        load_recipe(path)
    assert str(path) in str(raised.value)


def test_overrides_replace_single_fields_and_none_keeps_the_recipe():
    recipe = Recipe(lr=0.5, steps=10)
    changed = recipe.replace(lr=0.1, steps=None, image_size=[64, 128])
    assert (changed.lr, changed.steps, changed.image_size) == (0.1, 10, (64, 128))
    with pytest.raises(ValueError, match="unknown settings \\['speed'\\]"):
        recipe.replace(speed=3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": float("nan")}, "lr: expected a number from 0.0 to 10.0, got nan"),
        ({"lr": float("inf")}, "lr: expected a number from 0.0 to 10.0, got inf"),
        ({"clip": float("nan")}, "clip: expected a finite gradient norm above 0, got nan"),
        ({"clip": 0.0}, "clip: expected a finite gradient norm above 0, got 0.0"),
        ({"momentum": -5}, "momentum: expected a number from 0.0 to 0.999, got -5.0"),
        ({"weight_decay": float("nan")}, "weight_decay: expected a number from 0.0 to 1.0, got nan"),
        ({"warmup_ratio": float("nan")}, "warmup_ratio: expected a number from 0.0 to 1.0, got nan"),
        ({"gamma": -1}, "gamma: expected a number from 0.0 to 1.0, got -1.0"),
        ({"loss_weights": {"loss_mask": -1}}, "loss_weights.loss_mask: expected a number from 0.0 to 100.0, got -1.0"),
        ({"loss_weights": {"loss_mask": float("nan")}}, "loss_weights.loss_mask: expected a number .*, got nan"),
        ({"scales": [float("inf")]}, "scales: expected finite factors above 0, got \\[inf\\]"),
        ({"scales": [float("nan")]}, "scales: expected finite factors above 0, got \\[nan\\]"),
        ({"scales": [1.0, 1000.0]}, "scales: 1000.0 times image_size 256x512 makes 256000x512000 scenes"),
        ({"scale_range": [0.5, float("inf")]}, "scale_range: expected \\[low, high\\], two finite numbers"),
        ({"scale_range": [0.5, 100.0]}, "scale_range: images resized by up to 100.0 around crop_size 256x512"),
        ({"image_size": [100000, 100000]}, "image_size: image size '100000x100000': 10000000000 pixels"),
        ({"crop_size": [32, 4096]}, "crop_size: image size '32x4096': an aspect ratio beyond 16:1"),
        ({"milestones": [float("nan")]}, "milestones: expected steps from 1 to"),
        ({"workers": 1000000}, "workers: expected an integer from 0 to 64, got 1000000"),
        ({"val_count": 0}, "val_count: expected an integer from 1 to 5,000, got 0"),
        ({"batch_size": 10**6}, "batch_size: expected an integer from 1 to 256"),
        ({"steps": 10**12}, "steps: expected an integer from 1 to 1,000,000,000"),
        ({"seed": 2**64}, "seed: expected an integer from 0 to 4,294,967,295"),
        ({"steps": 10**400}, "steps: expected a number, got an integer of 401 digits"),
        ({"steps": 10**6, "val_every": 1}, "val_every: 1 over 1,000,000 steps validates 1,000,000 times; allowed: "
                                            "at most 100,000"),
        ({"steps": 10**9, "val_every": 9999}, "val_every: 9,999 over 1,000,000,000 steps validates 100,011 times"),
    ],
)
def test_every_numeric_setting_is_finite_and_in_its_range(changes, message):
    with pytest.raises(ValueError, match=message):
        Recipe().replace(**changes)


def test_the_largest_settings_allowed_are_accepted():
    recipe = Recipe(image_size=(1024, 2048), scales=(0.5, 4.0), crop_size=(1024, 2048), scale_range=(0.5, 4.0),
                    workers=64, val_count=5000, lr=10.0, momentum=0.999, clip=float(10**9),
                    steps=10**9, val_every=10**4)
    assert max(recipe.scales) == 4.0 and recipe.steps // recipe.val_every == 100_000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested more than 32 levels deep"),
        ("lr: 0.1\n".encode("utf-16"), "not UTF-8 text"),
        (b"1: 2\nlr: 0.1\n", "unknown keys \\['1'\\]"),
    ],
)
def test_a_malformed_recipe_file_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        load_recipe(path)
    assert str(raised.value).startswith(f"recipe {path}: ")


def test_a_recipe_path_that_is_no_file_is_named_for_what_it_is(tmp_path):
    with pytest.raises(ValueError, match=rf"^recipe {tmp_path}: not a regular file$"):
        load_recipe(tmp_path)
    with pytest.raises(ValueError, match=rf"^recipe {tmp_path / 'none.yaml'}: does not exist$"):
        load_recipe(tmp_path / "none.yaml")


def test_a_run_validates_every_val_every_steps_and_at_its_last():
    assert validations(Recipe(steps=1000, val_every=200)) == 5
    assert validations(Recipe(steps=1001, val_every=200)) == 6
    assert validations(Recipe(steps=1001, val_every=200), after=400) == 4
    assert validations(Recipe(steps=1000, val_every=200), after=1000) == 0
    assert validations(Recipe(steps=10**9, val_every=10**4 + 1)) == 10**9 // (10**4 + 1) + 1
