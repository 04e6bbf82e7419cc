"""The validation split: clips held out of the training split for model selection, so the test split is
only ever evaluated once, for the report.

`holdout_split` picks the clips from the seed alone (the same on every DDP rank and on resume): first one
clip for each class, rarest class first, so every class with at least two clips is in both parts
(multi-label stratification, greedy), then random clips up to the wanted size. `SubsetIndex` shows a part
as a split of its own, with the interface `train.loader.LogMelLoader` reads (a `ShardIndex`'s).
"""
import numpy as np

from train.shards import ShardIndex


def holdout_split(class_members: list[np.ndarray], num_clips: int, fraction: float, max_clips: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sorted clip indices: about `fraction` of the clips (at most `max_clips`) held out,
    every class with two or more clips in both parts."""
    rng = np.random.default_rng([seed, 0x5EED])
    wanted = min(max_clips, max(1, round(fraction * num_clips)))
    # each clip's classes, CSR-style: classes[starts[c]:starts[c + 1]]
    owners = np.concatenate([np.asarray(m, np.int64) for m in class_members] + [np.zeros(0, np.int64)])
    classes = np.repeat(np.arange(len(class_members)), [len(m) for m in class_members])[np.argsort(owners, kind="stable")]
    starts = np.searchsorted(np.sort(owners), np.arange(num_clips + 1))
    left_in_train = np.array([len(m) for m in class_members])
    covered = np.zeros(len(class_members), bool)
    held = np.zeros(num_clips, bool)

    def hold_if_train_keeps_every_class(clip: int) -> bool:
        carried = classes[starts[clip]:starts[clip + 1]]
        if held[clip] or (left_in_train[carried] < 2).any():
            return False
        held[clip], covered[carried] = True, True
        left_in_train[carried] -= 1
        return True

    for k in np.argsort(left_in_train, kind="stable"):           # rarest class first
        if not covered[k] and len(class_members[k]) >= 2:
            any(hold_if_train_keeps_every_class(int(c)) for c in rng.permutation(class_members[k]))
    for clip in rng.permutation(num_clips):
        if held.sum() >= wanted:
            break
        hold_if_train_keeps_every_class(int(clip))
    return np.flatnonzero(~held), np.flatnonzero(held)


class SubsetIndex:
    """Some clips of a ShardIndex, renumbered 0..n-1, read through it (safe to pickle to loader workers)."""

    def __init__(self, base: ShardIndex, clips: np.ndarray) -> None:
        self.base = base
        self.clips = np.asarray(clips, np.int64)
        self.sample_rate, self.clip_samples = base.sample_rate, base.clip_samples
        self.label_mids, self.label_names = base.label_mids, base.label_names

    @property
    def num_clips(self) -> int:
        return len(self.clips)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip `index` of the subset: waveform (clip_samples,) int16 and target (K,) uint8."""
        return self.base.read(int(self.clips[index]))

    def class_members(self) -> list[np.ndarray]:
        """For each class, the sorted subset positions of the clips that carry it."""
        return [np.searchsorted(self.clips, m[np.isin(m, self.clips)]) for m in self.base.class_members()]

    def check_unchanged(self, shard: int | None = None) -> None:
        """The base split's check that its shard files still have the sizes they had when opened."""
        self.base.check_unchanged(shard)

    def close(self) -> None:
        self.base.close()


def split_train(path: str, fraction: float, max_clips: int, seed: int) -> tuple[SubsetIndex, SubsetIndex]:
    """The training split at `path` as (train, validation) parts; see `holdout_split`."""
    index = ShardIndex.open(path)
    train, validation = holdout_split(index.class_members(), index.num_clips, fraction, max_clips, seed)
    return SubsetIndex(index, train), SubsetIndex(ShardIndex.open(path), validation)
