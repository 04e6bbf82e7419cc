"""Mixup and SpecAugment on log-mel batches: shapes, what they change, determinism from the generator."""
import numpy as np
import pytest
import torch

from train.data.augment import SpecAugmentConfig, mixup, spec_augment


def batch(b: int = 6, t: int = 37, f: int = 11, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 1, t, f) * 10 - 50, (torch.rand(b, k) < 0.4).float()


def test_mixup_mixes_inputs_and_targets_alike():
    x, y = batch()
    seed = int(np.random.default_rng(11692).integers(10**6))
    mx, my = mixup(x, y, 0.5, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    lam, partner = torch.tensor(rng.beta(0.5, 0.5, 6), dtype=torch.float32), torch.tensor(rng.permutation(6))
    torch.testing.assert_close(mx, lam.view(6, 1, 1, 1) * x + (1 - lam.view(6, 1, 1, 1)) * x[partner])
    torch.testing.assert_close(my, lam.view(6, 1) * y + (1 - lam.view(6, 1)) * y[partner])
    assert my.min() >= 0 and my.max() <= 1
    torch.testing.assert_close(mixup(x, y, 0.5, np.random.default_rng(seed))[0], mx)     # same seed, same batch


def test_spec_augment_masks_whole_stripes_with_the_clip_mean():
    x, _ = batch()
    config = SpecAugmentConfig(time_masks=2, time_width=10, freq_masks=1, freq_width=4)
    out, time_masked = spec_augment(x, config, np.random.default_rng(61174))
    assert out.shape == x.shape
    changed = out != x
    for clip in range(6):
        cells = changed[clip, 0]
        rows, cols = cells.all(dim=1), cells.all(dim=0)                  # masked frames, masked bins
        assert torch.equal(cells, rows[:, None] | cols[None, :])         # nothing but whole stripes
        assert torch.equal(time_masked[clip], rows)                        # the time stripes it reports
        assert rows.sum() <= 20 and cols.sum() <= 4
        torch.testing.assert_close(out[clip, 0][cells], x[clip].mean().expand(int(cells.sum())))


def test_spec_augment_with_zero_widths_is_identity():
    x, _ = batch()
    out, time_masked = spec_augment(x, SpecAugmentConfig(time_width=0, freq_width=0), np.random.default_rng(45888))
    assert torch.equal(out, x) and not time_masked.any()
    with pytest.raises(ValueError, match=">= 0"):
        SpecAugmentConfig(time_masks=-1)
