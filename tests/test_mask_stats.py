"""fastsca.mask_stats: the masks' statistics against hand-computed cases, captured from a model whose masks are
set by hand, and `python -m fastsca.mask_stats` printing the table for a checkpoint and a packed split."""
import math
from dataclasses import asdict

import h5py
import numpy as np
import pytest
import torch

from fastsca import mask_stats
from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.inference import CHECKPOINT_FORMAT
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from train.data.shards import ShardWriter

LOG_MEL = LogMelConfig(clip_samples=24000)   # 1.5 s: 60 frames, 15 x 4 maps at the attention blocks
CHANNELS = (4, 8, 8, 16, 23, 23, 23)           # odd C at every attention block
LABELS = ("tone", "chirp", "hiss")
SEED = 5
SPATIAL_LOGIT = 2.0                          # every block's logit_s, set by hand below
CHANNEL_LOGITS = torch.linspace(-6.0, 6.0, 23)   # every block's logit_c, channel by channel


def test_summary_of_a_hand_computed_case():
    # 0, 0.05, ..., 1 in a seeded order and an odd shape: the statistics do not depend on either
    values = torch.linspace(0.0, 1.0, 21)[torch.randperm(21, generator=torch.Generator().manual_seed(SEED))]
    got = mask_stats.summarise(values.reshape(1, 21, 1))
    # population std of 0..20 is sqrt((21^2 - 1) / 12); p5 and p95 fall on the 2nd and 20th values (0.05 x 20 = 1
    # step in); only 1.0 is above 0.99 and only 0.0 below 0.01. Tolerance: float32 linspace is within 1e-7 of i/20.
    assert got.count == 21
    assert got.mean == pytest.approx(0.5, abs=1e-7)
    assert got.std == pytest.approx(math.sqrt(440 / 12) / 20, abs=1e-7)
    assert (got.p05, got.p95) == (pytest.approx(0.05, abs=1e-7), pytest.approx(0.95, abs=1e-7))
    assert (got.saturated, got.shut) == (1 / 21, 1 / 21)


def test_summary_in_words():
    summary = mask_stats.Summary(mean=0.5214, std=0.1339, p05=0.2858, p95=0.6962, saturated=0.8974, shut=0.0, count=9)
    assert mask_stats.in_words(summary) == "mean 0.52, std 0.13, 5-95 % 0.29-0.70, 89.7 % above 0.99"


def test_summary_refuses_nothing():
    with pytest.raises(ValueError, match="no values"):
        mask_stats.summarise(torch.empty(0, 3))


def test_gate_of_each_combination():
    torch.manual_seed(SEED)
    s, c = torch.randn(3, 5, 7), torch.randn(3, 11)
    torch.testing.assert_close(mask_stats.gate_of(s, c, additive=False),
                               torch.sigmoid(s)[:, None] * torch.sigmoid(c)[:, :, None, None])
    torch.testing.assert_close(mask_stats.gate_of(s, c, additive=True),
                               torch.sigmoid(s[:, None] + c[:, :, None, None]))
    torch.testing.assert_close(mask_stats.gate_of(s, None, additive=False), torch.sigmoid(s)[:, None])
    torch.testing.assert_close(mask_stats.gate_of(None, c, additive=False), torch.sigmoid(c)[:, :, None, None])


def _hand_set_model(preset: str, fused: bool = False) -> torch.nn.Module:
    """A model whose attention blocks have logit_s = SPATIAL_LOGIT everywhere and logit_c = CHANNEL_LOGITS."""
    config = ModelConfig.from_name(preset, channels=CHANNELS, num_classes=len(LABELS), input_frames=LOG_MEL.frames)
    torch.manual_seed(SEED)
    model = build_model(config, RunOptions(fused_attention=fused))
    with torch.no_grad():
        for block in config.attention_blocks:
            attention = model.blocks[block].attention
            if attention.spatial is not None:
                g, local = attention.spatial.global_branch, attention.spatial.local_branch
                g.conv2.weight.zero_()
                g.conv2.bias.fill_(SPATIAL_LOGIT)
                local.w2.zero_()
                local.b2.zero_()
            if attention.channel is not None:
                attention.channel.fc2.weight.zero_()
                attention.channel.fc2.bias.copy_(CHANNEL_LOGITS)
    return model.eval()


def _float64_equal(summary: mask_stats.Summary) -> dict:
    """The summary's fields, equal up to float64 rounding (the same values summed in another order)."""
    return {name: pytest.approx(value, rel=1e-12, abs=1e-15) for name, value in asdict(summary).items()}


@pytest.mark.parametrize("preset", ["at-sca-3", "at-cps-3"])
def test_statistics_of_masks_set_by_hand(preset):
    model = _hand_set_model(preset)
    torch.manual_seed(SEED)
    mels = [torch.randn(2, 1, LOG_MEL.frames, 64), torch.randn(1, 1, LOG_MEL.frames, 64)]   # 3 clips, 2 batches
    blocks = mask_stats.mask_statistics(model, mels)
    assert [b.block for b in blocks] == [5, 6, 7]
    m_c = torch.sigmoid(CHANNEL_LOGITS)
    gate = (torch.sigmoid(SPATIAL_LOGIT + CHANNEL_LOGITS) if preset == "at-cps-3"
            else torch.sigmoid(torch.tensor(SPATIAL_LOGIT)) * m_c)
    for b in blocks:
        assert b.spatial.count == 3 * 15 * 4 and b.channel.count == 3 * 23 and b.gate.count == 3 * 23 * 15 * 4
        # constant masks: float32 sigmoid is within 1e-7 of the exact value
        assert b.spatial.mean == pytest.approx(1 / (1 + math.exp(-SPATIAL_LOGIT)), abs=1e-7)
        assert b.spatial.std == pytest.approx(0.0, abs=1e-7) and b.spatial.saturated == 0.0
        assert asdict(b.channel) == _float64_equal(mask_stats.summarise(m_c.repeat(3)))
        # 3 of the 23 logits_c are above logit(0.99) = 4.6 (4.91, 5.45, 6) and 3 below -4.6
        assert (b.channel.saturated, b.channel.shut) == (3 / 23, 3 / 23)
        assert asdict(b.gate) == _float64_equal(mask_stats.summarise(gate.repeat(3 * 15 * 4)))
    assert model.training is False


def test_a_fused_model_is_refused_and_a_model_without_attention_too():
    with pytest.raises(ValueError, match="fused_attention=False"):
        mask_stats.mask_statistics(_hand_set_model("at-sca-3", fused=True), [torch.randn(1, 1, LOG_MEL.frames, 64)])
    with pytest.raises(ValueError, match="has no attention"):
        mask_stats.mask_statistics(_hand_set_model("baseline"), [torch.randn(1, 1, LOG_MEL.frames, 64)])


def _write_split(path, clips: int) -> None:
    rng = np.random.default_rng(SEED)
    waveforms = (rng.standard_normal((clips, LOG_MEL.clip_samples)) * 3000).astype(np.int16)
    with ShardWriter(path, ("/m/t", "/m/c", "/m/h"), LABELS, 16000, LOG_MEL.clip_samples) as writer:
        writer.add(waveforms, np.eye(3, dtype=np.uint8)[np.arange(clips) % 3], [f"c{i}" for i in range(clips)])
        writer.commit()


def test_cli_prints_the_table(tmp_path, capsys):
    model = _hand_set_model("at-sca-3")
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 7, "label_names": list(LABELS),
                "config": {"model": asdict(model.config), "log_mel": asdict(LOG_MEL)}}, tmp_path / "sca.pt")
    _write_split(tmp_path / "eval.h5", clips=5)
    mask_stats.main([str(tmp_path / "sca.pt"), "--data", str(tmp_path / "eval.h5"), "--clips", "3",
                     "--batch-size", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("attention masks of 'at-sca-3' (step 7, arrangement sca) over 3 clip(s) of ")
    assert lines[1].split() == ["block", "mask", "mean", "std", "p5", "p95", ">0.99", "<0.01", "values"]
    rows = [line.split() for line in lines[3:]]
    assert [row[:2] for row in rows] == [[str(b), m] for b in (5, 6, 7) for m in ("M_s", "M_c", "gate")]
    assert rows[0][2:] == ["0.8808", "0.0000", "0.8808", "0.8808", "0.0%", "0.0%", "180"]   # sigmoid(2), 3 x 15 x 4
    assert rows[1][6:] == ["13.0%", "13.0%", "69"]                                          # 3 of 23 channels each


def test_cli_refuses_a_missing_split_in_one_line(tmp_path, capsys):
    model = _hand_set_model("at-sca-3")
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 7, "label_names": list(LABELS),
                "config": {"model": asdict(model.config), "log_mel": asdict(LOG_MEL)}}, tmp_path / "sca.pt")
    with pytest.raises(SystemExit) as exit_info:
        mask_stats.main([str(tmp_path / "sca.pt"), "--data", str(tmp_path / "none.h5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "none.h5" in err[0]


def test_data_may_be_a_packed_folder_and_bad_paths_get_one_line(tmp_path):
    from fastsca.mask_stats import shard_path

    folder = tmp_path / "packed"
    folder.mkdir()
    with pytest.raises(ValueError, match="a folder with no shard_"):
        shard_path(str(folder))
    for name in ("shard_00001.h5", "shard_00000.h5"):
        with h5py.File(folder / name, "w"):
            pass
    assert shard_path(str(folder)) == str(folder / "shard_00000.h5")
    (tmp_path / "notes.txt").write_text("not a shard")
    with pytest.raises(ValueError, match="not an HDF5 shard"):
        shard_path(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="no such file or folder"):
        shard_path(str(tmp_path / "missing.h5"))
