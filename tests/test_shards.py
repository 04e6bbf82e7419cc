"""train.data.shards: per-clip folds and groups round-trip through shards and an index; older shards read as unknown."""
import h5py
import numpy as np

from train.data.shards import ShardIndex, ShardWriter, write_index


def write_shard(path, clips, folds=None, groups=None):
    rng = np.random.default_rng(9)
    with ShardWriter(path, ("/m/a", "/m/b", "/m/c"), ("a", "b", "c"), 16000, 7) as writer:
        writer.add(rng.integers(-9, 9, (clips, 7), dtype=np.int16), rng.integers(0, 2, (clips, 3)),
                   [f"{path.stem}-{i}" for i in range(clips)], folds=folds, groups=groups)
        writer.commit()


def test_folds_and_groups_round_trip_and_default_to_unknown(tmp_path):
    rng = np.random.default_rng(17)
    folds = rng.integers(1, 11, 5).tolist()
    groups = [f"rec{g}" for g in rng.integers(0, 3, 5)]
    write_shard(tmp_path / "a.h5", 5, folds, groups)
    write_shard(tmp_path / "b.h5", 3)
    write_index(tmp_path, ["a.h5", "b.h5"])
    index = ShardIndex.open(tmp_path)
    np.testing.assert_array_equal(index.folds(), folds + [-1, -1, -1])
    assert index.groups() == groups + ["", "", ""]


def test_shards_written_before_folds_existed_read_as_unknown(tmp_path):
    write_shard(tmp_path / "old.h5", 4, [2, 2, 3, 3], ["r", "r", "s", "s"])
    with h5py.File(tmp_path / "old.h5", "a") as handle:
        del handle["fold"], handle["group"]
    index = ShardIndex.open(tmp_path / "old.h5")
    np.testing.assert_array_equal(index.folds(), [-1, -1, -1, -1])
    assert index.groups() == ["", "", "", ""]
