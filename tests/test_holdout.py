"""The validation split: fixed by the seed, every class in both parts, disjoint, read through the full split."""
import numpy as np
import pytest

from train.holdout import SubsetIndex, holdout_split
from train.shards import ShardIndex, ShardWriter


def _members(targets: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(targets[:, k]) for k in range(targets.shape[1])]


@pytest.mark.parametrize("clips, classes, fraction", [(53, 7, 0.1), (1000, 37, 0.2), (20, 11, 0.05)])
def test_split_is_stratified_disjoint_and_seeded(clips, classes, fraction):
    rng = np.random.default_rng()
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
    rng = np.random.default_rng()
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
