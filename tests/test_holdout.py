"""The validation split: fixed by the seed, every class in both parts, disjoint, read through the full split."""
import numpy as np
import pytest

from fastsca.frontend import LogMelConfig
from train.data.holdout import SubsetIndex, holdout_split, split_run
from train.data.loader import LoaderConfig, LogMelLoader
from train.data.shards import ShardError, ShardIndex, ShardWriter


def _members(targets: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(targets[:, k]) for k in range(targets.shape[1])]


@pytest.mark.parametrize("clips, classes, fraction", [(53, 7, 0.1), (1000, 37, 0.2), (20, 11, 0.05)])
def test_split_is_stratified_disjoint_and_seeded(clips, classes, fraction):
    rng = np.random.default_rng(15)
    targets = rng.random((clips, classes)) < rng.uniform(0.02, 0.3, classes)   # some classes very rare
    targets[rng.integers(clips), :] = True                                        # no class without clips
    members = _members(targets)
    train, validation = holdout_split(members, clips, fraction, 10_000, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, validation])), np.arange(clips))
    assert len(validation) >= min(round(fraction * clips), clips - 1)
    for k, m in enumerate(members):
        if len(m) >= 2:   # every class with two clips or more is in both parts
            assert targets[validation, k].any() and targets[train, k].any(), k
    again = holdout_split(members, clips, fraction, 10_000, seed=3)
    other = holdout_split(members, clips, fraction, 10_000, seed=4)
    assert np.array_equal(again[1], validation) and not np.array_equal(other[1], validation)


def test_max_clips_caps_the_random_part():
    targets = np.eye(5, dtype=bool)[np.arange(400) % 5]
    _, validation = holdout_split(_members(targets), 400, 0.5, 12, seed=0)
    assert len(validation) == 12


def test_subset_reads_the_chosen_clips(tmp_path):
    rng = np.random.default_rng(37)
    waveforms = rng.integers(-3000, 3000, (23, 160), dtype=np.int16)
    targets = (rng.random((23, 4)) < 0.4).astype(np.uint8)
    with ShardWriter(tmp_path / "a.h5", ("a", "b", "c", "d"), ("A", "B", "C", "D"), 16000, 160) as writer:
        writer.add(waveforms, targets, [f"clip{i}" for i in range(23)])
        writer.commit()
    index = ShardIndex.open(tmp_path / "a.h5")
    clips = np.sort(rng.choice(23, 9, replace=False))
    subset = SubsetIndex(index, clips)
    assert subset.num_clips == 9 and subset.num_classes == 4 and subset.label_names == ("A", "B", "C", "D")
    for i, clip in enumerate(clips):
        waveform, target = subset.read(i)
        assert np.array_equal(waveform, waveforms[clip]) and np.array_equal(target, targets[clip])
    for k, m in enumerate(subset.class_members()):
        assert np.array_equal(m, np.flatnonzero(targets[clips, k]))   # positions within the subset


@pytest.mark.parametrize("clips, classes, group_size", [(60, 5, 3), (301, 9, 7)])
def test_groups_are_held_out_whole(clips, classes, group_size):
    rng = np.random.default_rng(56)
    targets = rng.random((clips, classes)) < 0.3
    targets[np.arange(clips), rng.integers(0, classes, clips)] = True   # every clip carries a class
    groups = rng.permutation(np.arange(clips) // group_size)            # recordings of group_size clips, shuffled
    train, validation = holdout_split(_members(targets), clips, 0.2, 10_000, seed=1, groups=groups)
    assert np.array_equal(np.sort(np.concatenate([train, validation])), np.arange(clips))
    assert not set(groups[train]) & set(groups[validation])             # no recording on both sides
    # whole recordings, as many as fit in the size asked for
    assert round(0.2 * clips) - group_size < len(validation) <= round(0.2 * clips)
    assert len(validation) % group_size == 0
    for k in range(classes):
        assert targets[train, k].any(), k                               # training keeps every class


def test_without_groups_the_split_is_the_clip_level_one():
    rng = np.random.default_rng(71)
    targets = rng.random((80, 6)) < 0.25
    targets[np.arange(80), rng.integers(0, 6, 80)] = True
    members = _members(targets)
    plain = holdout_split(members, 80, 0.1, 10_000, seed=2)
    singletons = holdout_split(members, 80, 0.1, 10_000, seed=2, groups=np.arange(80))
    assert all(np.array_equal(a, b) for a, b in zip(plain, singletons))


def test_a_large_recording_is_not_held_out_past_the_size_asked_for():
    """A class's smallest recording is held out for it, and a recording that would overshoot is passed over:
    one recording of 40 slices beside 60 single-clip recordings, 10 % asked for."""
    rng = np.random.default_rng(83)
    clips = 100
    groups = np.concatenate([np.zeros(40, np.int64), np.arange(1, 61)])
    targets = np.zeros((clips, 3), bool)
    targets[:, 0] = True                                    # every clip carries class 0 ...
    targets[rng.choice(np.arange(40), 5, replace=False), 1] = True
    targets[40 + rng.choice(60, 5, replace=False), 1] = True     # ... class 1 is in both kinds of recording
    targets[40 + rng.choice(60, 30, replace=False), 2] = True
    train, validation = holdout_split(_members(targets), clips, 0.1, 10_000, seed=int(rng.integers(1000)),
                                      groups=groups)
    assert len(validation) == 10 and not (validation < 40).any()
    assert all(targets[validation, k].any() and targets[train, k].any() for k in range(3))


def _split_file(path, targets: np.ndarray, folds: list[int]) -> str:
    """A shard of `targets`' clips (short noise) with a fold per clip (-1: none)."""
    rng = np.random.default_rng(len(folds))
    names = tuple(f"c{k}" for k in range(targets.shape[1]))
    with ShardWriter(path, names, names, 16000, 1600) as writer:
        writer.add(rng.integers(-999, 999, (len(folds), 1600)).astype(np.int16), targets.astype(np.uint8),
                   [f"clip{i}" for i in range(len(folds))], folds=folds)
        writer.commit()
    return str(path)


def test_clips_without_a_fold_are_counted_in_one_line(tmp_path):
    targets = np.eye(3, dtype=bool)[np.arange(17) % 3]
    path = _split_file(tmp_path / "d.h5", targets, [-1, -1, -1, -1] + [k % 2 for k in range(13)])
    said = []
    train, validation, test = split_run(path, None, 0.2, 100, seed=5, fold=1, say=said.append)
    assert said == [f"note: 4 of the 17 clips of {path} carry no fold and are left out of this --fold run (pack them "
                    f"with a fold to use them)"]
    assert train.num_clips + validation.num_clips + test.num_clips == 13
    assert str(test) == f"fold 1 of {path}" and str(validation) == f"the validation part of the other folds of {path}"


def test_a_batch_too_large_names_the_part_not_an_object(tmp_path):
    targets = np.eye(3, dtype=bool)[np.arange(11) % 3]
    path = _split_file(tmp_path / "d.h5", targets, [-1] * 11)
    train, _, _ = split_run(path, path, 0.2, 100, seed=5)
    with pytest.raises(ValueError) as error:
        LogMelLoader(train, LoaderConfig(batch_size=64, drop_last=True), LogMelConfig(clip_samples=1600))
    assert str(error.value) == (f"a batch of 64 clips is more than the {train.num_clips} clips that the training part "
                                f"of {path} gives each of 1 process(es), and only full batches are trained on; use "
                                f"--batch-size {train.num_clips} or less, or a larger split")


def test_an_empty_validation_split_names_the_split_and_the_fix(tmp_path):
    path = _split_file(tmp_path / "d.h5", np.eye(3, dtype=bool), [-1] * 3)   # one clip a class: none can go
    with pytest.raises(ShardError) as error:
        split_run(path, path, 0.2, 100, seed=5)
    assert str(error.value) == (f"no clip of {path} (3 clips) could be held out as the validation split without "
                                f"taking a class's last training clip or splitting a recording; give more clips per "
                                f"class or a larger --validation-fraction")
