"""Each step's batch: a pure function of step and rank, from synthetic scenes or a dataset."""
import numpy as np
import torch

from efficientps_ros.data.synthetic import street_scene
from efficientps_ros.data.targets import normalize
from efficientps_ros.model import load_config
from efficientps_ros.training import batches
from efficientps_ros.training.batches import (
    StepBatches,
    ValidationScenes,
    step_loader,
    train_seeds,
    val_seeds,
)
from efficientps_ros.training.recipe import Recipe
from efficientps_ros.training.sampler import ShardedSampler

CONFIG = load_config("small")


def test_a_steps_batch_is_the_same_made_twice_and_in_a_worker():
    recipe = Recipe(steps=3, batch_size=2, image_size=(64, 128), scales=(0.5, 1.0), photometric=True)
    batches = StepBatches(CONFIG, recipe, ShardedSampler(None, 2, recipe.seed))
    again = StepBatches(CONFIG, recipe, ShardedSampler(None, 2, recipe.seed))
    assert torch.equal(batches[2].images, again[2].images)
    from_worker = list(step_loader(batches, start=1, workers=1))
    assert len(from_worker) == 2 and torch.equal(from_worker[1].images, batches[2].images)
    assert not torch.equal(batches[1].images[:, :, :32, :64], batches[2].images[:, :, :32, :64])


def test_ranks_draw_different_synthetic_scenes():
    assert set(train_seeds(0, 5, 2, rank=0, world_size=2)).isdisjoint(train_seeds(0, 5, 2, rank=1, world_size=2))
    assert train_seeds(0, 5, 2) == train_seeds(0, 5, 2, rank=0, world_size=1)


def test_dataset_batches_are_the_sampled_scenes():
    scenes = [street_scene(64, 128, seed=s) for s in range(4)]
    # No rescaling, no flip, a crop of the whole image: the batch is the scenes themselves.
    recipe = Recipe(steps=2, batch_size=2, crop_size=(64, 128), scale_range=(1.0, 1.0), flip_probability=0.0)
    sampler = ShardedSampler(len(scenes), 2, recipe.seed)
    batch = StepBatches(CONFIG, recipe, sampler, scenes)[1]
    for image, index in zip(batch.images, sampler.indices(1)):
        torch.testing.assert_close(image, normalize(scenes[index].image, CONFIG))
    labels = np.stack([scenes[i].semantic for i in sampler.indices(1)])
    assert torch.equal(torch.stack([t["semantic"] for t in batch.targets]), torch.from_numpy(labels.astype(np.int64)))


def test_validation_scenes_are_the_val_seeds_scenes_made_when_read(monkeypatch):
    made = []
    monkeypatch.setattr(batches, "street_scene", lambda h, w, seed: made.append((h, w, seed)) or seed)
    scenes = ValidationScenes((64, 128), 5000)
    assert len(scenes) == 5000 and made == []
    assert [scenes[0], scenes[4999], scenes[-1]] == [val_seeds(5000)[0], val_seeds(5000)[-1], val_seeds(5000)[-1]]
    assert made[0] == (64, 128, val_seeds(1)[0])
    monkeypatch.undo()
    scene = ValidationScenes((64, 128), 2)[1]
    expected = street_scene(64, 128, seed=val_seeds(2)[1])
    assert np.array_equal(scene.image, expected.image) and np.array_equal(scene.instance, expected.instance)


def test_validation_scenes_are_made_once_then_read_back_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "val_scenes"
    fresh = [street_scene(64, 128, seed=s) for s in val_seeds(2)]
    made = []
    real = batches.street_scene
    monkeypatch.setattr(batches, "street_scene", lambda h, w, seed: made.append(seed) or real(h, w, seed=seed))
    for _ in range(2):
        scenes = ValidationScenes((64, 128), 2, cache)
        for scene, expected in zip(scenes, fresh):
            for field in ("image", "semantic", "instance"):
                assert np.array_equal(getattr(scene, field), getattr(expected, field))
                assert getattr(scene, field).dtype == getattr(expected, field).dtype
            assert scene.instance_classes == expected.instance_classes and scene.crowd == expected.crowd
    assert made == val_seeds(2)
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob("*.partial"))


def test_a_cached_scene_cut_short_is_made_again(tmp_path):
    cache = tmp_path / "val_scenes"
    scenes = ValidationScenes((64, 128), 1, cache)
    expected = scenes[0]
    (path,) = cache.glob("*.npz")
    path.write_bytes(path.read_bytes()[:1000])
    assert np.array_equal(ValidationScenes((64, 128), 1, cache)[0].image, expected.image)
    assert path.stat().st_size > 1000
