"""The built-in weakly labelled set: deterministic clips, labels that match the events, caching."""
import h5py
import numpy as np
import pytest

from train.data.shards import ShardIndex
from train.data.synth import CLASS_NAMES, SynthConfig, _make_clips, ensure_builtin, make_clip

SMALL = SynthConfig(n_classes=12, clip_seconds=2.0, n_train=70, n_eval=9, event_seconds=(0.3, 1.0), seed=7)


def test_clips_are_deterministic_and_independent_of_chunking():
    start = int(np.random.default_rng(55976).integers(0, 10**6))
    waveforms, targets, events = _make_clips(SMALL, 0, start, start + 5)
    for row in range(5):
        waveform, target, clip_events = make_clip(SMALL, 0, start + row)
        np.testing.assert_array_equal(waveforms[row], waveform)
        np.testing.assert_array_equal(targets[row], target)
        assert [e[1:] for e in events if e[0] == row] == clip_events
    assert not np.array_equal(make_clip(SMALL, 0, start)[0], make_clip(SMALL, 1, start)[0])   # train != eval
    other_seed = SynthConfig(**{**SMALL.__dict__, "seed": 8})
    assert not np.array_equal(make_clip(SMALL, 0, start)[0], make_clip(other_seed, 0, start)[0])


def test_labels_match_events():
    config = SynthConfig(max_events=3)
    for index in np.random.default_rng(18994).integers(0, 10**6, 20):
        waveform, target, events = make_clip(config, 0, int(index))
        assert waveform.dtype == np.int16 and waveform.shape == (160000,) and np.abs(waveform).max() < 32767
        assert 1 <= len(events) <= 3
        classes = [k for _, _, k in events]
        assert len(set(classes)) == len(classes)                         # distinct classes per clip
        assert np.flatnonzero(target).tolist() == sorted(classes)
        for onset, offset, _ in events:
            assert 0 <= onset < offset <= 10.0 and 1.0 <= offset - onset <= 4.0


def test_events_stand_out_of_the_background():
    config = SynthConfig(max_events=1, snr_db=(10.0, 10.0))
    waveform, _, [(onset, offset, _)] = make_clip(config, 0, int(np.random.default_rng(6564).integers(10**6)))
    x = waveform / 32768.0
    inside = x[int(onset * 16000):int(offset * 16000)]
    outside = np.concatenate([x[:int(onset * 16000)], x[int(offset * 16000):]])
    ratio_db = 10 * np.log10(np.mean(inside**2) / np.mean(outside**2))
    assert ratio_db == pytest.approx(10 * np.log10(1 + 10.0), abs=0.75)  # (event + background) / background


@pytest.mark.slow
def test_ensure_builtin_writes_the_shard_layout_and_caches(tmp_path):
    train, evaluation = ensure_builtin(tmp_path, SMALL, workers=2)
    assert train.parent.name == f"synth-{SMALL.cache_key()}"
    split = ShardIndex.open(train)
    assert split.num_clips == 70 and split.clip_samples == 32000 and split.sample_rate == 16000
    assert split.label_names == CLASS_NAMES and ShardIndex.open(evaluation).num_clips == 9
    with h5py.File(train) as handle:
        target = handle["target"][:]
        clip, label = handle["strong_clip"][:], handle["strong_label"][:]
        onset, offset = handle["strong_onset"][:], handle["strong_offset"][:]
        np.testing.assert_array_equal(handle["waveform"][69], make_clip(SMALL, 0, 69)[0])
        assert handle["audio_name"][0].decode() == "synth-train-000000" and handle.attrs["has_strong"]
    strong_target = np.zeros_like(target)
    strong_target[clip, label] = 1
    np.testing.assert_array_equal(strong_target, target)                 # weak labels = classes of the events
    assert np.all((0 <= onset) & (onset < offset) & (offset <= 2.0))

    mtime = train.stat().st_mtime_ns
    assert ensure_builtin(tmp_path, SMALL) == (train, evaluation) and train.stat().st_mtime_ns == mtime
    evaluation.unlink()                                                  # interrupted before eval was done
    (evaluation.parent / "eval.h5.tmp").write_bytes(b"partial")
    ensure_builtin(tmp_path, SMALL, workers=1)
    assert ShardIndex.open(evaluation).num_clips == 9 and train.stat().st_mtime_ns == mtime
    assert SynthConfig(n_train=71).cache_key() != SynthConfig().cache_key()


@pytest.mark.parametrize("overrides, message", [
    ({"n_classes": 13}, "n_classes"), ({"max_events": 0}, "max_events"), ({"n_eval": 0}, "n_train"),
    ({"sample_rate": 8000}, "sample_rate"), ({"event_seconds": (1.0, 20.0)}, "event_seconds"),
    ({"snr_db": (10.0, 0.0)}, "snr_db"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(**overrides)
