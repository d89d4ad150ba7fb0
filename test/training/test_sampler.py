"""The sharded sampler: disjoint shards, whole epochs, a seeded order that depends on the step alone."""
import pytest

from efficientps_ros.training.sampler import ShardedSampler


def _shards(length, batch, world, step, seed=0):
    return [ShardedSampler(length, batch, seed, rank, world).indices(step) for rank in range(world)]


def test_the_ranks_of_a_step_take_disjoint_samples_and_an_epoch_covers_the_dataset_once():
    length, batch, world = 12, 2, 3  # two steps an epoch
    epoch = [i for step in (0, 1) for shard in _shards(length, batch, world, step) for i in shard]
    assert sorted(epoch) == list(range(length))
    for step in range(6):
        flat = [i for shard in _shards(length, batch, world, step) for i in shard]
        assert len(set(flat)) == batch * world


def test_the_order_is_seeded_and_changes_between_epochs():
    first = [ShardedSampler(10, 10, seed=1).indices(step) for step in range(3)]
    assert first == [ShardedSampler(10, 10, seed=1).indices(step) for step in range(3)]
    assert first[0] != first[1] and sorted(first[0]) == sorted(first[1]) == list(range(10))
    assert ShardedSampler(10, 10, seed=2).indices(0) != first[0]


def test_an_endless_stream_counts_on_and_the_state_says_where_it_stands():
    assert _shards(None, 2, 2, 3) == [[12, 13], [14, 15]]
    assert ShardedSampler(10, 2, 0, 1, 2).state(7) == {"step": 7, "epoch": 2, "offset": 8, "global_batch": 4, "seed": 0}


def test_impossible_samplers_are_refused():
    with pytest.raises(ValueError, match="the training dataset is empty"):
        ShardedSampler(0, 1)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        ShardedSampler(5, 1, rank=2, world_size=2)
