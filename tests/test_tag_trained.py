"""Tags depend only on the audio, checked with a model trained for a minute on the built-in set's sounds:
the same sound at 2.0 s and 2.1 s gets the same tags within 0.05; and, with a stand-in model whose output
is known exactly, an event crossing window joins is one event."""
import numpy as np
import pytest
import soundfile
import torch

from fastsca.tagging import engine
from fastsca.config import ModelConfig
from fastsca.events import detect_events
from fastsca.frontend import LogMelConfig, log_mel
from fastsca.inference import TrainedModel
from fastsca.model import TaggingOutput, build_model
from fastsca.run_options import RunOptions
from train.loss import clip_bce
from train.data import synth
from train.data.synth import SynthConfig, make_clip

SYNTH = SynthConfig(n_classes=4, clip_seconds=2.0, event_seconds=(0.4, 1.2), max_events=2)
STEPS, BATCH = 120, 32


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    """A small at-sca-3 on 2 s clips of 4 built-in classes, trained in-process (no loader) to mAP ~1."""
    torch.manual_seed(0)
    settings = LogMelConfig(clip_samples=32000)
    config = ModelConfig.from_name("at-sca-3", num_classes=4, input_frames=settings.frames,
                                   channels=(8, 8, 16, 16, 32, 32, 32))
    model = build_model(config, RunOptions(fused_attention=False))
    clips = [make_clip(SYNTH, 0, i) for i in range(STEPS * BATCH // 4)]
    mels = log_mel(torch.from_numpy(np.stack([c[0] for c in clips]).astype(np.float32) / 32768), settings)
    targets = torch.from_numpy(np.stack([c[1] for c in clips])).float()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = torch.randint(len(clips), (BATCH,), generator=generator)
        loss = clip_bce(model(mels[batch]).clip, targets[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return TrainedModel(model=model.eval(), log_mel=settings, label_names=SYNTH.class_names, step=STEPS, configs={})


def background(rng, seconds: float) -> np.ndarray:
    """Pink noise at the built-in set's background level, as the model heard in training."""
    noise = synth._noise(rng, int(seconds * 16000), 16000, 0.0, 8000.0, tilt=1.0)
    return (noise * synth.BACKGROUND_RMS / np.sqrt(np.mean(noise ** 2))).astype(np.float32)


@pytest.mark.slow
def test_the_same_sound_at_2_0_and_2_1_seconds_gets_the_same_tags(trained, tmp_path):
    config = SynthConfig(**{**SYNTH.__dict__, "clip_seconds": 2.1})
    compared, right = 0, 0
    for index in range(40):
        waveform, target, events = make_clip(config, 1, index)
        if max(offset for _, offset, _ in events) > 1.95:   # the 2.0 s cut must hold the whole sound
            continue
        paths = []
        for seconds in (2.0, 2.1):
            paths.append(tmp_path / f"{index}-{seconds}.wav")
            soundfile.write(paths[-1], waveform[: int(seconds * 16000)], 16000, subtype="PCM_16")
        short, long = (engine.tag_file(trained, str(p)) for p in paths)
        np.testing.assert_allclose(short.clip, long.clip, atol=0.05, rtol=0)
        right += set(np.flatnonzero(short.clip > 0.5)) == set(np.flatnonzero(target))
        compared += 1
        if compared == 12:
            break
    assert compared == 12 and right >= 8   # the model is trained: most clips get exactly their tags


class LoudnessModel(torch.nn.Module):
    """A stand-in for the network whose frame probability is a logistic of each output frame's mean
    log-mel level: what it should say is known exactly, wherever the window joins fall."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, mel: torch.Tensor) -> TaggingOutput:                 # mel: (B, 1, T, F)
        level = mel[:, 0].mean(dim=2)                                       # (B, T)
        pooled = level.view(len(mel), self.config.output_frames, -1).mean(dim=2)
        frame = torch.sigmoid(self.scale * (pooled + 40.0))[..., None]     # (B, T', 1): above -40 dB -> 1
        return TaggingOutput(frame.amax(dim=1), frame)


def test_an_event_crossing_window_joins_is_one_event(tmp_path):
    settings = LogMelConfig(clip_samples=32000)
    config = ModelConfig(num_classes=1, input_frames=settings.frames)
    trained = TrainedModel(model=LoudnessModel(config).eval(), log_mel=settings, label_names=("loud",), step=0,
                           configs={})
    rng = np.random.default_rng(11019)
    waveform = 1e-4 * rng.standard_normal(7 * 16000).astype(np.float32)
    # 1.2-3.8 s: 2 s windows every 1 s hand over at 1.5, 2.5 and 3.5 s, so three joins fall inside the sound
    waveform[int(1.2 * 16000): int(3.8 * 16000)] += 0.3 * rng.standard_normal(int(2.6 * 16000)).astype(np.float32)
    path = tmp_path / "loud.wav"
    soundfile.write(path, waveform, 16000, subtype="FLOAT")
    tags = engine.tag_file(trained, str(path))
    assert tags.frame.shape == (70, 1)
    events = detect_events(tags.frame, tags.frame_seconds, ("loud",), str(path), clip_probs=tags.clip)
    # within a frame and a half: the 64 ms STFT window spreads the sound's edges into the neighbouring frame
    assert [(e.onset, e.offset) for e in events] == [(pytest.approx(1.2, abs=0.15), pytest.approx(3.8, abs=0.15))]
