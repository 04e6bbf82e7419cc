"""The DALI log-mel loader over HDF5 shards: shapes, labels, parity with librosa and the torch
reference, DDP sharding, partial batches, mid-epoch resume, and errors. Short 1 s clips keep it fast."""
import itertools
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fastsca.frontend import LogMelConfig, log_mel
from train.data.loader import LoaderConfig, LogMelLoader
from train.data.shards import ShardError, ShardWriter
from train.data.synth import CLASS_NAMES, SynthConfig, ensure_builtin, make_clip

from test_frontend import assert_db_close, librosa_log_mel

FRONT_END = LogMelConfig(clip_samples=16000)
SYNTH = SynthConfig(n_classes=5, clip_seconds=1.0, n_train=45, n_eval=4, max_events=2, event_seconds=(0.2, 0.8),
                    seed=11)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(path, waveforms (N, 16000) float, targets (N, K), reference log-mel (N, 1, 40, 64))."""
    path, _ = ensure_builtin(tmp_path_factory.mktemp("synth"), SYNTH, workers=1)
    with h5py.File(path) as handle:
        waveforms = handle["waveform"][:] / 32768.0
        targets = handle["target"][:].astype(np.float32)
    return path, waveforms, targets, log_mel(torch.from_numpy(waveforms), FRONT_END)


def collect(loader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    batches = list(loader)
    return [x for x, _ in batches], [y for _, y in batches]


def matched_rows(log_mels: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """Which reference clip each loader clip is (nearest log-mel)."""
    distance = (log_mels.flatten(1)[:, None] - reference.flatten(1)[None]).abs().amax(dim=2)
    assert distance.min(dim=1).values.max() < 0.5
    return distance.argmin(dim=1).tolist()


@pytest.mark.slow
def test_shapes_labels_and_log_mel_match_the_shards(data):
    path, waveforms, targets, reference = data
    config = LoaderConfig(batch_size=8, sampler="sequential", drop_last=False, num_workers=2)
    with LogMelLoader(path, config, FRONT_END) as loader:
        assert len(loader) == 6 and loader.num_clips == 45
        assert loader.label_names == ["tone", "up-chirp", "down-chirp", "noise-burst", "click-train"]
        mels, labels = collect(loader)
        assert [m.shape for m in mels] == [(8, 1, 40, 64)] * 5 + [(5, 1, 40, 64)]     # partial last batch
        assert all(m.dtype == torch.float32 and y.dtype == torch.float32 for m, y in zip(mels, labels))
        mels, labels = torch.cat(mels), torch.cat(labels)
        np.testing.assert_array_equal(labels.numpy(), targets)
        for clip in range(45):                      # DALI vs the float64 torch reference
            assert_db_close(mels[clip, 0].numpy(), reference[clip, 0].numpy())
        for clip in (0, 44):                        # and vs librosa
            assert_db_close(mels[clip, 0].numpy(), librosa_log_mel(waveforms[clip].astype(np.float32), FRONT_END))
        again, _ = collect(loader)                  # the next epoch reuses the pipeline
        torch.testing.assert_close(torch.cat(again), mels)
        assert loader._builds == 1


def test_ten_second_clips_match_librosa(tmp_path):
    clips = [make_clip(SynthConfig(), 0, int(i)) for i in np.random.default_rng(50852).integers(0, 10**6, 3)]
    with ShardWriter(tmp_path / "ten.h5", CLASS_NAMES[:10], CLASS_NAMES[:10], 16000, 160000) as writer:
        writer.add(np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips]), ["a", "b", "c"])
        writer.commit()
    config = LoaderConfig(batch_size=2, sampler="sequential", drop_last=False, num_workers=0)
    with LogMelLoader(tmp_path / "ten.h5", config) as loader:
        mels = torch.cat([x for x, _ in loader])
    assert mels.shape == (3, 1, 400, 64)
    for mel, (waveform, _, _) in zip(mels, clips):
        assert_db_close(mel[0].numpy(), librosa_log_mel(waveform / np.float32(32768), LogMelConfig()))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_every_clip_once(data, world_size):
    path, _, targets, reference = data
    seen = []
    for rank in range(world_size):
        config = LoaderConfig(batch_size=4, sampler="shuffle", drop_last=False, num_workers=0, seed=5)
        with LogMelLoader(path, config, FRONT_END, rank=rank, world_size=world_size) as loader:
            mels, labels = collect(loader)
            rows = matched_rows(torch.cat(mels), reference)
            np.testing.assert_array_equal(torch.cat(labels).numpy(), targets[rows])
            seen += rows
    assert sorted(seen) == list(range(45))


def test_drop_last_gives_every_rank_the_same_number_of_full_batches(data):
    path = data[0]
    for rank in (0, 1):
        config = LoaderConfig(batch_size=8, sampler="balanced", num_workers=0)
        with LogMelLoader(path, config, FRONT_END, rank=rank, world_size=2) as loader:
            mels, _ = collect(loader)
            assert len(loader) == len(mels) == 2 and all(m.shape[0] == 8 for m in mels)   # 22 clips per rank


@pytest.mark.slow
def test_resume_mid_epoch_gives_the_same_next_batches(data):
    config = LoaderConfig(batch_size=8, sampler="balanced", num_workers=2, mixup_alpha=0.4, spec_augment=True,
                          seed=int(np.random.default_rng(74558).integers(1000)))
    with LogMelLoader(data[0], config, FRONT_END) as loader:
        loader.set_epoch(2)
        expected = list(loader)
        assert len(expected) == 5 and loader.state_dict()["sampler"]["epoch"] == 3
    with LogMelLoader(data[0], config, FRONT_END) as loader:
        loader.set_epoch(2)
        head = list(itertools.islice(loader, 2))
        state = loader.state_dict()
        rest = list(loader)                          # after a break: a fresh pipeline, same position
    with LogMelLoader(data[0], config, FRONT_END) as resumed:
        resumed.load_state_dict(state)
        resumed.set_epoch(2)                         # as a training loop would: stays mid-epoch
        after_resume = list(resumed)
    for got in (head + rest, head + after_resume):
        assert len(got) == 5
        for (x, y), (ex, ey) in zip(got, expected):
            torch.testing.assert_close(x, ex, rtol=0, atol=0)
            torch.testing.assert_close(y, ey, rtol=0, atol=0)
    assert any(((y > 0) & (y < 1)).any() for _, y in expected)             # mixup did mix the targets


def test_an_old_iterator_cannot_continue_after_a_new_pass(data):
    with LogMelLoader(data[0], LoaderConfig(batch_size=4, num_workers=0), FRONT_END) as loader:
        old = iter(loader)
        next(old)
        new = iter(loader)
        with pytest.raises(RuntimeError, match="superseded"):
            next(old)
        assert next(new)[0].shape == (4, 1, 40, 64)
        order_dir = Path(loader._order_dir)
    assert not order_dir.exists()                   # close() removes the clip-order files


def test_errors(data, tmp_path):
    with pytest.raises(ValueError, match=r"holds 1 s clips \(16000 samples at 16000 Hz\) but the model takes "
                                         r"10 s clips \(160000 samples at 16000 Hz\).*--clip-seconds"):
        LogMelLoader(data[0], LoaderConfig(), LogMelConfig())
    with pytest.raises(ValueError, match=r"a batch of 64 clips is more than the 45 clips .* each of 1 process\(es\)"
                                         r".* use --batch-size 45 or less"):
        LogMelLoader(data[0], LoaderConfig(batch_size=64), FRONT_END)
    with pytest.raises(ValueError, match=r"more than the 22 clips .* each of 2 process\(es\).*--batch-size 22 or"):
        LogMelLoader(data[0], LoaderConfig(batch_size=23), FRONT_END, world_size=2)
    with pytest.raises(ValueError, match="sampler 'random'"):
        LoaderConfig(sampler="random")
    truncated = tmp_path / "train.h5"
    shutil.copy(data[0], truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size // 3)
    with pytest.raises(ShardError, match=r"train\.h5: not a readable HDF5 shard .*truncated"):
        LogMelLoader(truncated, LoaderConfig(), FRONT_END)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pipeline_matches_the_cpu_one(data):
    config = LoaderConfig(batch_size=8, sampler="sequential", drop_last=False)
    with LogMelLoader(data[0], config, FRONT_END, device=torch.device("cuda")) as loader:
        mels, labels = collect(loader)
    assert mels[0].device.type == "cuda" and labels[0].device.type == "cuda"
    mels = torch.cat(mels).cpu()
    for clip in range(45):
        assert_db_close(mels[clip, 0].numpy(), data[3][clip, 0].numpy())
    np.testing.assert_array_equal(torch.cat(labels).cpu().numpy(), data[2])
