"""Samplers: every clip once per epoch across ranks, balanced class frequencies, determinism, resume."""
import itertools

import numpy as np
import pytest

from train.data.sampler import ClipSampler, balanced_order


def imbalanced_members(sizes: list[int]) -> tuple[int, list[np.ndarray]]:
    """Single-label clips: class k has sizes[k] clips, in shuffled positions."""
    clips = np.random.default_rng(24837).permutation(sum(sizes))
    bounds = np.cumsum([0, *sizes])
    return sum(sizes), [np.sort(clips[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("kind", ["shuffle", "sequential"])
@pytest.mark.parametrize("num_clips", [1, 10, 11, 37])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_clip_once_per_epoch_across_ranks(kind, num_clips, world_size):
    seed = int(np.random.default_rng(60383).integers(1000))
    samplers = [ClipSampler(kind, num_clips, seed, rank, world_size) for rank in range(world_size)]
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        taken = [list(sampler) for sampler in samplers]
        assert sorted(i for rank in taken for i in rank) == list(range(num_clips))
        assert max(map(len, taken)) - min(map(len, taken)) <= 1
        assert [len(t) for t in taken] == [len(s) for s in samplers]
    if kind == "sequential":
        assert taken[0] == list(range(0, num_clips, world_size))


def test_shuffle_is_deterministic_per_seed_and_epoch():
    a, b = ClipSampler("shuffle", 100, seed=3), ClipSampler("shuffle", 100, seed=3)
    np.testing.assert_array_equal(a.epoch_indices(5), b.epoch_indices(5))
    assert not np.array_equal(a.epoch_indices(5), a.epoch_indices(6))
    assert not np.array_equal(a.epoch_indices(5), ClipSampler("shuffle", 100, seed=4).epoch_indices(5))


def test_balanced_class_frequencies_are_roughly_equal():
    num_clips, members = imbalanced_members([2000, 400, 100, 30, 10])
    label = np.empty(num_clips, np.int64)
    for k, m in enumerate(members):
        label[m] = k
    for world_size in (1, 2):
        samplers = [ClipSampler("balanced", num_clips, 0, rank, world_size, members) for rank in range(world_size)]
        drawn = np.concatenate([s.epoch_indices() for s in samplers])
        assert len(drawn) == num_clips
        counts = np.bincount(label[drawn], minlength=5)
        assert counts.min() >= 0.95 * counts.max(), counts                   # 2000:10 in the data
        for rank_draws in (s.epoch_indices() for s in samplers):             # and within each rank
            per_rank = np.bincount(label[rank_draws], minlength=5)
            assert per_rank.min() >= 0.9 * per_rank.max(), per_rank
    # a rare class cycles through all its clips before repeating one
    drawn = ClipSampler("balanced", num_clips, 0, class_members=members).epoch_indices()
    rare = drawn[label[drawn] == 4]
    assert all(len(set(rare[i:i + 10])) == 10 for i in range(0, len(rare) - 9, 10))


def test_balanced_handles_multi_label_and_empty_classes():
    members = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([2])]
    order = balanced_order(members, 6, np.random.default_rng(27913))
    assert len(order) == 6 and set(order.tolist()) <= {0, 1, 2} and (order == 2).sum() >= 3
    with pytest.raises(ValueError, match="at least one clip with a label"):
        balanced_order([np.array([], dtype=np.int64)], 3, np.random.default_rng(34858))


@pytest.mark.parametrize("kind", ["balanced", "shuffle", "sequential"])
def test_resume_gives_the_same_next_indices(kind):
    num_clips, members = imbalanced_members([50, 20, 7])
    seed = int(np.random.default_rng(96636).integers(1000))
    reference = ClipSampler(kind, num_clips, seed, 1, 2, members)
    reference.set_epoch(3)
    expected = list(reference)
    interrupted = ClipSampler(kind, num_clips, seed, 1, 2, members)
    interrupted.set_epoch(3)
    head = list(itertools.islice(interrupted, 13))
    state = interrupted.state_dict()
    resumed = ClipSampler(kind, num_clips, seed, 1, 2, members)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)                                   # the training loop's call: keeps the position
    assert head + list(resumed) == expected
    assert resumed.epoch == 4 and resumed.position == 0   # the epoch ran out: the next one begins


def test_state_from_another_setup_is_refused():
    state = ClipSampler("shuffle", 10, 0, 0, 2).state_dict()
    with pytest.raises(ValueError, match="world_size=2 but this sampler has 1"):
        ClipSampler("shuffle", 10).load_state_dict(state)


@pytest.mark.parametrize("args, message", [
    (("random", 10), "not one of"), (("shuffle", 10, 0, 2, 2), "rank 2"), (("balanced", 10), "class_members"),
    (("shuffle", 0), "no clips"),
])
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        ClipSampler(*args)
