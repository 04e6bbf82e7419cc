"""Training on strong labels: frame targets from packed events, read per clip through the DALI loader (with which
clips have strong labels), mixed up with their clips, and the frame BCE masked to the strongly labelled clips; a
train.run on data with strong labels trains with it by default, and --strong-loss-weight 0 turns it off."""
import numpy as np
import pytest
import torch

import train.run
import train.step
from fastsca.frontend import LogMelConfig
from train.data.augment import mix_strong, mixup, mixup_pairs, spec_augment, unmasked_frames
from train.data.frame_targets import StrongTargets, frame_targets
from train.data.holdout import SubsetIndex
from train.data.loader import LoaderConfig, LogMelLoader
from train.data.shards import ShardIndex, ShardWriter
from train.loss import PROB_EPS, frame_bce

LABELS = ("a", "b", "c")
# (row, onset s, offset s, column) of a 1 s shard of 7 clips: clips 1, 4 and 6 have no events (not annotated)
EVENTS = [(0, 0.1, 0.5, 0), (0, 0.32, 0.98, 2), (2, 0.0, 1.0, 2), (3, 0.33, 0.36, 0), (3, 0.5, 0.9, 1),
          (5, 0.71, 0.83, 1)]


def test_frame_targets_mark_the_frames_whose_centres_an_event_covers():
    events = np.array([[0.1, 0.5, 0], [0.33, 0.36, 1], [0.96, 1.0, 2], [0.0, 1.0, 1]])
    target = frame_targets(events, 10, 1.0, 3)     # frames of 0.1 s, centres at 0.05, 0.15, ...
    expected = np.zeros((10, 3), np.uint8)
    expected[1:5, 0] = 1        # centres 0.15 ... 0.45 lie in [0.1, 0.5)
    expected[:, 1] = 1          # the whole clip (and the 30 ms event inside it)
    expected[9, 2] = 1          # 40 ms holding no centre: the frame it starts in
    np.testing.assert_array_equal(target, expected)
    short = frame_targets(np.array([[0.33, 0.36, 0]]), 10, 1.0, 1)
    np.testing.assert_array_equal(np.flatnonzero(short[:, 0]), [3])
    assert frame_targets(np.zeros((0, 3)), 7, 1.0, 2).shape == (7, 2)


@pytest.fixture(scope="module")
def strong_shard(tmp_path_factory):
    """A 7-clip shard of 1 s clips packed with strong labels for clips 0, 2, 3 and 5."""
    rng = np.random.default_rng(29512)
    path = tmp_path_factory.mktemp("strong") / "strong.h5"
    targets = np.zeros((7, 3), np.uint8)
    for row, _, _, column in EVENTS:
        targets[row, column] = 1
    targets[[1, 4, 6], 0] = 1   # weak labels only
    with ShardWriter(path, LABELS, LABELS, 16000, 16000, has_strong=True) as writer:
        writer.add((rng.standard_normal((7, 16000)) * 3000).astype(np.int16), targets, [f"c{i}" for i in range(7)],
                   EVENTS)
        writer.commit()
    return path


def expected_frames(row: int, frames: int = 10) -> np.ndarray:
    events = np.array([[on, off, k] for r, on, off, k in EVENTS if r == row]).reshape(-1, 3)
    return frame_targets(events, frames, 1.0, 3)


def test_the_index_reads_each_clip_s_events_and_which_clips_have_them(strong_shard):
    index = ShardIndex.open(strong_shard)
    np.testing.assert_array_equal(index.strong_clips(), [True, False, True, True, False, True, False])
    np.testing.assert_allclose(index.read_events(3), [[0.33, 0.36, 0], [0.5, 0.9, 1]], rtol=1e-6)
    assert index.read_events(1) is None and index.read_events(6) is None
    part = SubsetIndex(index, np.array([1, 3, 5]))
    np.testing.assert_array_equal(part.strong_clips(), [False, True, True])
    np.testing.assert_allclose(part.read_events(2), [[0.71, 0.83, 1]], rtol=1e-6)


def test_a_shard_without_strong_labels_has_no_strong_clips(tmp_path):
    with ShardWriter(tmp_path / "weak.h5", LABELS, LABELS, 16000, 16000) as writer:
        writer.add(np.ones((3, 16000), np.int16), np.eye(3, dtype=np.uint8), ["x", "y", "z"])
        writer.commit()
    index = ShardIndex.open(tmp_path / "weak.h5")
    assert not index.strong_clips().any() and index.read_events(0) is None


@pytest.mark.parametrize("workers", [0, 2])   # in the main process, and DALI's parallel workers
def test_the_loader_gives_each_clip_s_frame_targets_and_strong_flag(strong_shard, workers):
    config = LoaderConfig(batch_size=3, sampler="sequential", drop_last=False, num_workers=workers)
    with LogMelLoader(strong_shard, config, LogMelConfig(clip_samples=16000), strong_frames=10) as loader:
        batches = list(loader)
    assert [len(b) for b in batches] == [3, 3, 3]
    frame = torch.cat([b[2].frame for b in batches])
    strong = torch.cat([b[2].strong for b in batches])
    assert frame.shape == (7, 10, 3) and frame.dtype == torch.float32
    torch.testing.assert_close(strong, torch.tensor([1.0, 0, 1, 1, 0, 1, 0]))
    for row in range(7):
        np.testing.assert_array_equal(frame[row].numpy(), expected_frames(row))
    with LogMelLoader(strong_shard, config, LogMelConfig(clip_samples=16000)) as loader:
        assert [len(b) for b in loader] == [2, 2, 2]   # without strong_frames: (log_mel, target) as ever


def test_the_loader_leaves_the_frames_specaugment_hid_out_of_the_frame_loss(strong_shard):
    config = LoaderConfig(batch_size=7, sampler="sequential", num_workers=0, spec_augment=True, seed=5)
    with LogMelLoader(strong_shard, config, LogMelConfig(clip_samples=16000), strong_frames=10) as loader:
        log_mel, _, strong = next(iter(loader))
    rng = np.random.default_rng([5, 0, 0, 0])   # the loader's generator of epoch 0, rank 0, batch 0
    _, time_masked = spec_augment(torch.zeros_like(log_mel), config.spec_augment_masks, rng)
    expected = unmasked_frames(StrongTargets(strong.frame, strong.strong), time_masked).seen
    assert torch.equal(strong.seen, expected) and 0 < int(expected.sum()) < expected.numel()


def test_the_loader_mixes_frame_targets_with_their_clips(strong_shard):
    config = LoaderConfig(batch_size=7, sampler="sequential", num_workers=0, mixup_alpha=0.4, seed=3)
    with LogMelLoader(strong_shard, config, LogMelConfig(clip_samples=16000), strong_frames=10) as loader:
        _, target, strong = next(iter(loader))
    rng = np.random.default_rng([3, 0, 0, 0])   # the loader's generator of epoch 0, rank 0, batch 0
    lam, partner = mixup_pairs(7, 0.4, rng, torch.device("cpu"))
    frames = torch.from_numpy(np.stack([expected_frames(row) for row in range(7)])).float()
    flags = torch.tensor([1.0, 0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(strong.frame, lam.view(7, 1, 1) * frames + (1 - lam.view(7, 1, 1)) * frames[partner])
    torch.testing.assert_close(strong.strong, flags * flags[partner])
    assert target.shape == (7, 3) and not torch.equal(strong.frame, frames)


def test_mixup_of_frame_targets_follows_the_clips_and_needs_both_strong():
    batch, frames, classes = 6, 7, 5
    x = torch.randn(batch, 1, 11, 13)
    y = (torch.rand(batch, classes) < 0.4).float()
    strong = StrongTargets((torch.rand(batch, frames, classes) < 0.3).float(), torch.tensor([1.0, 1, 0, 1, 0, 1]))
    seed = int(np.random.default_rng(40417).integers(10**6))
    lam, partner = mixup_pairs(batch, 0.5, np.random.default_rng(seed), x.device)
    mixed = mix_strong(strong, lam, partner)
    expected = lam.view(batch, 1, 1) * strong.frame + (1 - lam.view(batch, 1, 1)) * strong.frame[partner]
    torch.testing.assert_close(mixed.frame, expected)
    torch.testing.assert_close(mixed.strong, strong.strong * strong.strong[partner])
    # the pairs are mixup's own: the same draws mix the log-mels and clip targets
    mx, my = mixup(x, y, 0.5, np.random.default_rng(seed))
    torch.testing.assert_close(mx, lam.view(batch, 1, 1, 1) * x + (1 - lam.view(batch, 1, 1, 1)) * x[partner])


def test_frame_bce_averages_the_strong_clips_only():
    batch, frames, classes = 5, 7, 3
    prob = torch.rand(batch, frames, classes).clamp(0.01, 0.99)
    target = (torch.rand(batch, frames, classes) < 0.4).float()
    flags = torch.tensor([1.0, 0, 1, 0, 1])
    loss = frame_bce(prob, StrongTargets(target, flags))
    cells = -(target * prob.log() + (1 - target) * (1 - prob).log())
    torch.testing.assert_close(loss, cells[[0, 2, 4]].mean())
    # what the other clips hold changes nothing
    other_prob = prob.clone()
    other_prob[[1, 3]] = torch.rand(2, frames, classes).clamp(0.01, 0.99)
    other_target = torch.where(flags.bool()[:, None, None], target, 1 - target)
    torch.testing.assert_close(frame_bce(other_prob, StrongTargets(other_target, flags)), loss)
    assert frame_bce(prob, StrongTargets(target, torch.zeros(batch))) == 0


def test_frame_bce_gradient_reaches_the_strong_clips_only():
    batch, frames, classes = 4, 9, 5
    prob = torch.rand(batch, frames, classes).clamp(0.02, 0.98).requires_grad_()
    target = torch.rand(batch, frames, classes)      # soft targets, as mixup makes them
    flags = torch.tensor([0.0, 1, 1, 0])
    frame_bce(prob, StrongTargets(target, flags)).backward()
    p = prob.detach()
    # d/dp of the mean BCE over the 2 strong clips' cells: (p - y) / (p (1 - p)) / (2 x T' x K)
    expected = (p - target) / (p * (1 - p)) / (2 * frames * classes) * flags.view(batch, 1, 1)
    torch.testing.assert_close(prob.grad, expected, atol=1e-7, rtol=1e-5)   # fp32 rounding of the division
    assert prob.grad[[0, 3]].abs().max() == 0


def test_frames_specaugment_hid_are_left_out_of_the_frame_loss():
    batch, model_frames, pool, classes = 5, 7, 4, 3
    generator = torch.Generator().manual_seed(52113)
    prob = torch.rand(batch, model_frames, classes, generator=generator).clamp(0.01, 0.99)
    target = (torch.rand(batch, model_frames, classes, generator=generator) < 0.4).float()
    flags = torch.tensor([1.0, 0, 1, 1, 1])
    time_masked = torch.zeros(batch, model_frames * pool, dtype=torch.bool)
    time_masked[0, 4:12] = True       # model frames 1 and 2 wholly
    time_masked[2, 9:11] = True       # half of frame 2: heard enough to keep
    time_masked[3, 17:28] = True      # frame 4 (3 of 4), 5 and 6
    time_masked[1] = True             # a clip without strong labels: nothing to leave out
    strong = unmasked_frames(StrongTargets(target, flags), time_masked)
    seen = torch.ones(batch, model_frames)
    seen[0, 1:3] = 0
    seen[3, 4:7] = 0
    seen[1] = 0
    assert torch.equal(strong.seen, seen)
    cells = -(target * prob.log() + (1 - target) * (1 - prob).log()).mean(dim=2)   # (B, T')
    kept = seen * flags[:, None]
    torch.testing.assert_close(frame_bce(prob, strong), (cells * kept).sum() / kept.sum())
    # with nothing hidden, the loss is the clip-averaged one
    nothing = unmasked_frames(StrongTargets(target, flags), torch.zeros_like(time_masked))
    torch.testing.assert_close(frame_bce(prob, nothing), frame_bce(prob, StrongTargets(target, flags)))
    with pytest.raises(ValueError, match="27 input frames do not pool to 7 model frames"):
        unmasked_frames(StrongTargets(target, flags), time_masked[:, :27])


def test_frame_bce_is_finite_at_saturated_frames():
    prob = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    loss = frame_bce(prob, StrongTargets(target, torch.ones(1)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(prob.grad).all()
    # two of the four cells wrong, each by the clamp: 1e-7 below, 1 - 1e-7 (1 - 1.19e-7 in fp32) above
    expected = -(torch.tensor(PROB_EPS).log() + (1 - torch.tensor(1 - PROB_EPS)).log()) / 4
    torch.testing.assert_close(loss, expected)


@pytest.mark.slow   # three 3-step runs on the tiny built-in set (shared with tests/test_train_run.py)
def test_a_run_on_data_with_strong_labels_trains_with_the_frame_loss(tmp_path, builtin_dir, monkeypatch, capsys):
    from test_train_run import tiny_args

    seen = []
    real = train.step.frame_bce

    def counting(frame_prob, strong):
        seen.append((tuple(frame_prob.shape), strong.strong.clone(), strong.frame.clone()))
        return real(frame_prob, strong)

    monkeypatch.setattr(train.step, "frame_bce", counting)
    train.run.main(tiny_args(tmp_path / "on", builtin_dir, 3))
    out = capsys.readouterr().out
    # the built-in set's clips all have strong labels; 1 s clips give 10 output frames
    assert "frame loss x1 on the " in out and " training clips with strong labels" in out
    assert [shape for shape, _, _ in seen] == [(16, 10, 10)] * 3
    assert all(bool((flags == 1).all()) for _, flags, _ in seen)
    assert all(0 < float(frame.mean()) < 1 for _, _, frame in seen)
    losses = [r["loss"] for r in _records(tmp_path / "on")]
    seen.clear()
    train.run.main(tiny_args(tmp_path / "off", builtin_dir, 3, "--strong-loss-weight", "0"))
    assert "no frame loss (--strong-loss-weight 0)" in capsys.readouterr().out and not seen
    # the same batches and initialisation: the frame loss is the only difference, and it adds to the loss
    assert all(on > off for on, off in zip(losses, (r["loss"] for r in _records(tmp_path / "off"))))


def _records(out) -> list[dict]:
    from test_train_run import records
    return records(out, "train")


def test_the_start_up_line_says_which_clips_the_frame_loss_sees_or_why_none():
    from train.trainer.trainer import _frame_loss
    assert _frame_loss(0.5, 37) == "frame loss x0.5 on the 37 training clips with strong labels"
    assert _frame_loss(1.0, 0) == "no frame loss (no strong labels)"
    assert _frame_loss(0.0, 0) == "no frame loss (--strong-loss-weight 0)"
