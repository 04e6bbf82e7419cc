"""The validation split: clips held out of the training split for model selection, so the test split is
only ever evaluated once, for the report.

`holdout_split` picks the clips from the seed alone (the same on every DDP rank and on resume): first one
clip for each class, rarest class first, so every class with at least two clips is in both parts
(multi-label stratification, greedy), then random clips up to the wanted size. Where the split says which
recording each clip was cut from (its groups), whole recordings are held out, so no recording has clips on
both sides: for a class, its smallest recording first, and then only recordings that fit in the wanted
size, so the part stays near the fraction asked for (on UrbanSound8K's real clips, where one recording
gives up to a dozen slices, taking any recording held out 27 % of the training clips for a 10 % request). `SubsetIndex` shows a part as a split of its own, with the interface `train.data.loader.LogMelLoader`
reads (a `ShardIndex`'s). With a fold (`split_run`), that fold is the test split and the rest is split so.
"""
import sys

import numpy as np
import torch

from train.data.shards import ShardError, ShardIndex


def say_once(text: str) -> None:
    """Print a note (when there is one) on stderr, once per run: on the first DDP process only."""
    if text and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(text, file=sys.stderr, flush=True)


def holdout_split(class_members: list[np.ndarray], num_clips: int, fraction: float, max_clips: int,
                  seed: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sorted clip indices: about `fraction` of the clips (at most `max_clips`) held out,
    every class with two or more clips in both parts where whole groups allow it; `groups` (num_clips,) int
    holds each clip's group (clips of one group are held out together; None: every clip its own group)."""
    rng = np.random.default_rng([seed, 0x5EED])
    wanted = min(max_clips, max(1, round(fraction * num_clips)))
    # each clip's classes, CSR-style: classes[starts[c]:starts[c + 1]]
    owners = np.concatenate([np.asarray(m, np.int64) for m in class_members] + [np.zeros(0, np.int64)])
    classes = np.repeat(np.arange(len(class_members)), [len(m) for m in class_members])[np.argsort(owners, kind="stable")]
    starts = np.searchsorted(np.sort(owners), np.arange(num_clips + 1))
    left_in_train = np.array([len(m) for m in class_members])
    covered = np.zeros(len(class_members), bool)
    held = np.zeros(num_clips, bool)
    if groups is not None:   # each group's clips, CSR-style: by_group[group_starts[g]:group_starts[g + 1]]
        by_group = np.argsort(groups, kind="stable")
        group_starts = np.searchsorted(groups[by_group], np.arange(groups.max() + 2))
        group_size = np.diff(group_starts)[groups]   # (num_clips,) clips in each clip's group
    else:
        group_size = np.ones(num_clips, np.int64)

    def hold_if_train_keeps_every_class(clip: int) -> bool:
        if held[clip]:
            return False
        clips = [clip] if groups is None else by_group[group_starts[groups[clip]]:group_starts[groups[clip] + 1]]
        carried, counts = np.unique(np.concatenate([classes[starts[c]:starts[c + 1]] for c in clips]),
                                    return_counts=True)
        if (left_in_train[carried] - counts < 1).any():
            return False
        held[clips], covered[carried] = True, True
        left_in_train[carried] -= counts
        return True

    for k in np.argsort(left_in_train, kind="stable"):           # rarest class first
        if not covered[k] and len(class_members[k]) >= 2:
            candidates = rng.permutation(class_members[k])
            candidates = candidates[np.argsort(group_size[candidates], kind="stable")]   # smallest recording first
            any(hold_if_train_keeps_every_class(int(c)) for c in candidates)
    for clip in rng.permutation(num_clips):
        if held.sum() >= wanted:
            break
        if held.sum() + group_size[clip] <= wanted:   # a recording that would overshoot the size is passed over
            hold_if_train_keeps_every_class(int(clip))
    return np.flatnonzero(~held), np.flatnonzero(held)


class SubsetIndex:
    """Some clips of a ShardIndex, renumbered 0..n-1, read through it (safe to pickle to loader workers); `name`
    says which part it is in messages ("the validation part of D")."""

    def __init__(self, base: ShardIndex, clips: np.ndarray, name: str = "a part of a split") -> None:
        self.base = base
        self.clips = np.asarray(clips, np.int64)
        self.name = name
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

    def read_events(self, index: int) -> np.ndarray | None:
        """Clip `index`'s strong events (n, 3), None where it has no strong labels (ShardIndex.read_events)."""
        return self.base.read_events(int(self.clips[index]))

    def strong_clips(self) -> np.ndarray:
        """(num_clips,) bool: which clips of the subset have strong labels."""
        return self.base.strong_clips()[self.clips]

    def class_members(self) -> list[np.ndarray]:
        """For each class, the sorted subset positions of the clips that carry it."""
        return [np.searchsorted(self.clips, m[np.isin(m, self.clips)]) for m in self.base.class_members()]

    def check_unchanged(self, shard: int | None = None) -> None:
        """The base split's check that its shard files still have the sizes they had when opened."""
        self.base.check_unchanged(shard)

    def close(self) -> None:
        self.base.close()

    def __str__(self) -> str:
        return self.name


def group_ids(names: list[str]) -> np.ndarray | None:
    """Each clip's group as an int (a clip of unknown group, "", is a group of its own); None when no clip's
    group is known."""
    if not any(names):
        return None
    _, ids = np.unique([name or f"\0clip{i}" for i, name in enumerate(names)], return_inverse=True)
    return ids.astype(np.int64)


def fold_clips(index: ShardIndex, path: str, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(other folds, fold `fold`) clip indices of a split packed with folds (clips without a fold are in
    neither); ShardError (one line) if it has no folds or not that one."""
    folds = index.folds()
    known = np.unique(folds[folds >= 0])
    if not len(known):
        raise ShardError(f"{path} has no folds (it was packed without a fold per clip); drop --fold, or pack "
                         f"it with folds")
    if fold not in known:
        raise ShardError(f"{path} has no fold {fold}; its folds are {', '.join(map(str, known))}")
    return np.flatnonzero((folds >= 0) & (folds != fold)), np.flatnonzero(folds == fold)


def foldless_note(index: ShardIndex, path: str) -> str:
    """The line saying how many clips of `path` carry no fold (and so are in no part of a --fold run); "" for
    none."""
    missing = int((index.folds() < 0).sum())
    return (f"note: {missing} of the {index.num_clips} clips of {path} carry no fold and are left out of this "
            f"--fold run (pack them with a fold to use them)") if missing else ""


def split_run(path: str, eval_path: str, fraction: float, max_clips: int, seed: int, fold: int | None = None,
              say=say_once, validation_path: str | None = None) -> tuple[SubsetIndex, SubsetIndex, ShardIndex | SubsetIndex]:
    """A run's (train, validation, test) parts: validation held out of the training split at `path` (see
    `holdout_split`; whole recordings where it knows them) and test the split at `eval_path`, or with `fold`,
    test that fold of `path` and train and validation from its other folds; with `validation_path`, all of
    `path` trains and that split validates."""
    index = ShardIndex.open(path)
    pool = np.arange(index.num_clips)
    if validation_path is not None:
        validation = ShardIndex.open(validation_path)
        return (SubsetIndex(index, pool, path),
                SubsetIndex(validation, np.arange(validation.num_clips), validation_path), ShardIndex.open(eval_path))
    test: ShardIndex | SubsetIndex
    if fold is None:
        test = ShardIndex.open(eval_path)
    else:
        pool, test_clips = fold_clips(index, path, fold)
        test = SubsetIndex(ShardIndex.open(path), test_clips, f"fold {fold} of {path}")
        say(foldless_note(index, path))
    members = SubsetIndex(index, pool).class_members()
    groups = group_ids(index.groups())
    train, validation = holdout_split(members, len(pool), fraction, max_clips, seed,
                                      None if groups is None else np.unique(groups[pool], return_inverse=True)[1])
    source = f"the other folds of {path}" if fold is not None else path
    if len(validation) == 0:
        raise ShardError(f"no clip of {source} ({len(pool)} clips) could be held out as the validation split without "
                         f"taking a class's last training clip or splitting a recording; give more clips per class "
                         f"or a larger --validation-fraction")
    return (SubsetIndex(index, pool[train], f"the training part of {source}"),
            SubsetIndex(ShardIndex.open(path), pool[validation], f"the validation part of {source}"), test)
