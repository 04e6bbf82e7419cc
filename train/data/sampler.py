"""Clip samplers: PANNs-style class-balanced, shuffled and sequential, sharded by DDP rank, resumable.

An epoch's order is a pure function of (kind, seed, epoch, the data), so every rank computes the same
global order and takes its own slice `order[rank::world_size]`: every clip is in exactly one rank's
slice (balanced sampling draws with replacement, so there it is the draws that are split). Nothing
is padded, so ranks may get one clip more or less. Resuming needs only (epoch, position): the
indices after the position are recomputed, equal to those an uninterrupted run would have given.

Balanced sampling (Kong et al., PANNs): clips are drawn round-robin over a shuffled list of the
classes (reshuffled each round), each class taking the next clip from its own queue of clips,
reshuffled when exhausted. An epoch has as many draws as the data have clips, so rare classes are
seen as often as common ones. Unlike PANNs the queues start afresh each epoch, so epoch e does not
depend on the epochs before it.
"""
import numpy as np

SAMPLERS = ("balanced", "shuffle", "sequential")


def balanced_order(members: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` clip indices drawn round-robin over the classes that have clips (`members[k]`)."""
    active = np.array([k for k, m in enumerate(members) if len(m)], dtype=np.int64)
    if not len(active):
        raise ValueError("balanced sampling needs at least one clip with a label")
    rounds = -(-length // len(active))
    classes = rng.permuted(np.tile(active, (rounds, 1)), axis=1).ravel()[:length]   # (length,) class per draw
    draws = np.argsort(classes, kind="stable")               # draw positions grouped by class, in order
    bounds = np.searchsorted(classes[draws], active, side="left").tolist() + [length]
    order = np.empty(length, np.int64)
    for k, start, stop in zip(active, bounds[:-1], bounds[1:]):
        if start == stop:                                     # fewer draws than classes
            continue
        queue = members[k]
        laps = -(-(stop - start) // len(queue))
        order[draws[start:stop]] = np.concatenate([rng.permutation(queue) for _ in range(laps)])[: stop - start]
    return order


class ClipSampler:
    """Indices of one rank's clips, epoch by epoch, with a resumable position within the epoch."""

    def __init__(self,
                 kind: str,
                 num_clips: int,
                 seed: int = 0,
                 rank: int = 0,
                 world_size: int = 1,
                 class_members: list[np.ndarray] | None = None) -> None:
        if kind not in SAMPLERS:
            raise ValueError(f"sampler {kind!r} is not one of {', '.join(SAMPLERS)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 ({world_size - 1})")
        if kind == "balanced" and class_members is None:
            raise ValueError("balanced sampling needs class_members (ShardIndex.class_members())")
        if num_clips < 1:
            raise ValueError("there are no clips to sample")
        self.kind = kind
        self.num_clips = num_clips
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.class_members = class_members
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices for `epoch` (default: the current one), from its start."""
        epoch = self.epoch if epoch is None else epoch
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.kind == "sequential":
                order = np.arange(self.num_clips, dtype=np.int64)
            elif self.kind == "shuffle":
                order = rng.permutation(self.num_clips)
            else:
                order = balanced_order(self.class_members, self.num_clips, rng)
            self._cached = (epoch, order[self.rank::self.world_size])
        return self._cached[1]

    def __len__(self) -> int:
        """Indices of this rank per epoch."""
        return len(range(self.rank, self.num_clips, self.world_size))

    def remaining(self) -> np.ndarray:
        """The current epoch's indices after the position."""
        return self.epoch_indices()[self.position:]

    def advance(self, count: int) -> None:
        """Mark `count` more indices as consumed; past the epoch's end, the next epoch starts."""
        self.position += count
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of `epoch`; a no-op when already in it (e.g. just resumed mid-epoch)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self):
        """Yield the rest of the current epoch's indices, advancing the position as they are taken."""
        for index in self.remaining():
            self.advance(1)
            yield int(index)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "num_clips": self.num_clips, "rank": self.rank,
                "world_size": self.world_size, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`; it must come from a sampler over the same data and ranks."""
        for key in ("kind", "seed", "num_clips", "rank", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}; resume with the same data, sampler and ranks")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
