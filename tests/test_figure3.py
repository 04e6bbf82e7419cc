"""`python -m fastsca.figure3`: Fig. 3 from two checkpoints, with hooks that capture what each block made; --out is
never one of its inputs, nor a file it did not write unless --overwrite."""
from dataclasses import asdict

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from fastsca import figure3, mask_stats
from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.inference import CHECKPOINT_FORMAT
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from kernels import reference
from train.data.shards import ShardWriter

LOG_MEL = LogMelConfig(clip_samples=24000)          # 1.5 s: 60 frames, 15 x 4 maps at the attention blocks
CHANNELS = (4, 8, 8, 16, 16, 24, 24)
LABELS = ("tone", "chirp", "hiss")
SEED = 3


def _checkpoint(path, preset: str) -> torch.nn.Module:
    config = ModelConfig.from_name(preset, channels=CHANNELS, num_classes=len(LABELS), input_frames=LOG_MEL.frames)
    torch.manual_seed(SEED)
    model = build_model(config, RunOptions(fused_attention=False))
    with torch.no_grad():   # unit-scale attention weights, so the masks and channel weights are far from 0.5
        for name, p in model.named_parameters():
            if ".attention." in name:
                p.normal_()
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 7, "label_names": list(LABELS),
                "config": {"model": asdict(config), "log_mel": asdict(LOG_MEL)}}, path)
    return model.eval()


@pytest.mark.parametrize("arrangement", ["sca", "cps", "csa"])
def test_capture_holds_each_attention_block(arrangement):
    model = build_model(ModelConfig(arrangement=arrangement, attention_depth=2, channels=CHANNELS, num_classes=3,
                                    input_frames=60), RunOptions(fused_attention=False)).eval()
    mel = torch.randn(1, 1, 60, 64)
    found, frame = figure3.capture(model, mel, model.config.attention_blocks)
    assert sorted(found) == [5, 6] and frame.shape == (15, 3)
    x = model.input_norm(mel.transpose(1, 3)).transpose(1, 3)
    with torch.no_grad():
        for index, block in enumerate(model.blocks):
            main = block.bn2(block.conv2(block.act(block.bn1(block.conv1(x)))))
            x_next = block(x)
            if index in found:
                spatial = block.attention.spatial
                got = found[index]
                torch.testing.assert_close(got.output, x_next[0])
                torch.testing.assert_close(got.attended, block.attention(main)[0])
                s = reference.channel_pool(main) if arrangement != "csa" else None
                if s is not None:
                    torch.testing.assert_close(got.logit_s, spatial(s)[0, 0])
                assert got.logit_c.shape == (24,) and got.logit_s.shape == (15, 4)
                mask = figure3.applied_mask(arrangement, got)
                expected = (torch.sigmoid(got.logit_s + got.logit_c[:, None, None]).mean(0) if arrangement == "cps"
                            else torch.sigmoid(got.logit_s))
                torch.testing.assert_close(mask, expected)
                # the C//S mask is not sigma(s): each channel's gate carries its own logit_c
                assert (arrangement == "cps") == (not torch.allclose(mask, torch.sigmoid(got.logit_s)))
            x = x_next


def test_predicted_events_are_runs_above_one_half():
    frame = torch.zeros(10, 2)
    frame[2:5, 0] = 0.9
    frame[9:, 0] = 0.6
    frame[0:10, 1] = 0.5
    events = figure3.predicted_events(frame, ("a", "b"), seconds=5.0)
    assert events == (figure3.Event(1.0, 2.5, "a"), figure3.Event(4.5, 5.0, "a"), figure3.Event(0.0, 5.0, "b"))


@pytest.mark.slow
def test_draws_all_panels_for_a_clip_of_a_split(tmp_path, capsys):
    _checkpoint(tmp_path / "base.pt", "baseline")
    _checkpoint(tmp_path / "sca.pt", "at-cps-3")
    rng = np.random.default_rng(SEED)
    waveforms = (rng.standard_normal((3, LOG_MEL.clip_samples)) * 3000).astype(np.int16)
    with ShardWriter(tmp_path / "eval.h5", ("/m/t", "/m/c", "/m/h"), LABELS, 16000, LOG_MEL.clip_samples,
                     has_strong=True) as writer:
        writer.add(waveforms, np.eye(3, dtype=np.uint8), ["c0", "c1", "c2"],
                   events=[(1, 0.2, 0.9, 1), (1, 0.5, 1.4, 2), (2, 0.1, 0.3, 0)])
        writer.commit()
    clip = figure3.read_clip(f"{tmp_path / 'eval.h5'}:1", 16000, LOG_MEL.clip_samples)
    assert clip.events == (figure3.Event(pytest.approx(0.2), pytest.approx(0.9), "chirp"),
                           figure3.Event(pytest.approx(0.5), pytest.approx(1.4), "hiss"))
    np.testing.assert_array_equal(clip.waveform, waveforms[1] / np.float32(32768))
    out = tmp_path / "fig.png"
    figure3.main([f"{tmp_path / 'eval.h5'}:1", "--baseline", str(tmp_path / "base.pt"), "--model",
                  str(tmp_path / "sca.pt"), "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    assert image.shape[0] > image.shape[1] > 600 and image.std() > 20   # a tall figure with drawn content


@pytest.mark.slow
def test_audio_file_with_an_events_csv_and_bad_inputs(tmp_path, capsys):
    _checkpoint(tmp_path / "base.pt", "baseline")
    _checkpoint(tmp_path / "sca.pt", "at-sca-2")
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, np.random.default_rng(SEED).standard_normal(30000).astype(np.float32) * 0.1, 16000)
    (tmp_path / "events.csv").write_text("onset,offset,label\n0.1,0.6,tone\n")
    figure3.main([str(wav), "--baseline", str(tmp_path / "base.pt"), "--model", str(tmp_path / "sca.pt"),
                  "--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / "f.png")])
    assert (tmp_path / "f.png").stat().st_size > 10_000
    capsys.readouterr()
    for argv, message in [([str(wav), "--baseline", str(tmp_path / "sca.pt"), "--model", str(tmp_path / "base.pt")],
                           "has no attention"),
                          ([f"{tmp_path}/none.h5:0", "--baseline", str(tmp_path / "base.pt"), "--model",
                            str(tmp_path / "sca.pt")], "none.h5")]:
        with pytest.raises(SystemExit) as exit_info:
            figure3.main(argv + ["--out", str(tmp_path / "x.png")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_out_is_never_an_input_nor_a_file_it_did_not_write(tmp_path, capsys):
    _checkpoint(tmp_path / "base.pt", "baseline")
    _checkpoint(tmp_path / "sca.pt", "at-sca-3")
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, np.random.default_rng(SEED).standard_normal(24000).astype(np.float32) * 0.1, 16000)
    before = {name: (tmp_path / name).read_bytes() for name in ("base.pt", "sca.pt", "clip.wav")}
    args = [str(wav), "--baseline", str(tmp_path / "base.pt"), "--model", str(tmp_path / "sca.pt")]

    def refused(out: str, *extra: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            figure3.main(args + ["--out", out, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1
        return err

    for name in ("sca.pt", "base.pt", "clip.wav"):   # --overwrite or not, an input is never replaced
        assert f"is the input {tmp_path / name}" in refused(str(tmp_path / name), "--overwrite")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"\x89PNG\r\n\x1a\n my own picture")
    assert refused(str(notes)) == (f"error: --out {notes}: exists and was not written by fastsca.figure3; give "
                                   f"another file name, or --overwrite to replace it\n")
    assert notes.read_bytes() == b"\x89PNG\r\n\x1a\n my own picture"
    assert "give a .png, .pdf or .svg file name" in refused(str(tmp_path / "f.jpg"))
    figure3.main(args + ["--out", str(notes), "--overwrite"])
    figure3.main(args + ["--out", str(notes)])   # its own figure: drawn again without --overwrite
    assert Image.open(notes).info["Creator"] == "fastsca.figure3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt", "clip.wav", "notes.png", "sca.pt"]   # no .tmp


@pytest.mark.slow
def test_mask_panels_are_titled_with_their_statistics(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "base.pt", "baseline")
    _checkpoint(tmp_path / "sca.pt", "at-sca-3")
    baseline, model = (figure3.load_trained_model(tmp_path / name) for name in ("base.pt", "sca.pt"))
    waveform = np.random.default_rng(SEED).standard_normal(LOG_MEL.clip_samples).astype(np.float32) * 0.1
    drawn = []
    monkeypatch.setattr(figure3.plt, "close", drawn.append)   # keep the figure to read its titles
    figure3.draw(figure3.Clip(waveform, "noise", (), "none"), baseline, model, tmp_path / "f.png")
    titles = [ax.get_title(loc="left") for ax in drawn[0].axes if ax.get_title(loc="left").startswith("(d) spatial")]
    found, _ = figure3.capture(model.model, figure3.log_mel(torch.from_numpy(waveform)[None], LOG_MEL), (4, 5, 6))
    assert len(titles) == 3
    for block, title in zip((4, 5, 6), titles):
        words = mask_stats.in_words(mask_stats.summarise(figure3.applied_mask("sca", found[block])))
        assert title.startswith(f"(d) spatial mask applied in block {block + 1}: ") and title.endswith(f"; {words}")
        assert " % above 0.99" in words
