"""Tagging and event detection over long files: seconds per hour of audio and peak memory, streamed.

The model is the train `cpu` profile's at-sca-3 (its widths, 2 s windows, 10 classes; untrained: the
cost does not depend on the weights). The files are 16 kHz 16-bit wavs of pink-ish noise with tones,
written block by block. Peak memory is the process's resident peak (VmHWM) over the run, reset before
it, so a long file's figure against a short one's shows whether memory stays bounded. The `plot` rows
run as `fastsca.tag FILE --plot fig.png` does: they keep only what the figure needs (the log-mel,
attention maps and frame probabilities of its default 60 s range) and draw it. Target: one hour in
<= 15 s on the 2-core CPU box.
"""
import resource
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastsca.config import ModelConfig
from fastsca.events import detect_events
from fastsca.frontend import LogMelConfig
from fastsca.inference import TrainedModel
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from fastsca.tagging.engine import EVENT_REACH_SECONDS, Asked, tag_file
from train.profiles import PROFILES

# Written a minute at a time, so making the file does not itself hold an hour of samples.
WRITE_BLOCK_SECONDS = 60


def cpu_profile_model() -> TrainedModel:
    """at-sca-3 as the cpu profile trains it on the built-in set's 10 classes, in eval mode."""
    profile = PROFILES["cpu"]
    log_mel = LogMelConfig(clip_samples=round(profile.clip_seconds * 16000))
    config = ModelConfig.from_name("at-sca-3", num_classes=10, input_frames=log_mel.frames,
                                   channels=profile.channels)
    torch.manual_seed(0)
    names = tuple(f"class-{k}" for k in range(10))
    return TrainedModel(model=build_model(config, RunOptions(fused_attention=False)).eval(), log_mel=log_mel,
                        label_names=names, step=0, configs={})


def write_long_wav(path: Path, seconds: int, sample_rate: int = 16000) -> Path:
    rng = np.random.default_rng(seconds)
    with soundfile.SoundFile(path, "w", sample_rate, 1, "PCM_16") as handle:
        for start in range(0, seconds, WRITE_BLOCK_SECONDS):
            n = min(WRITE_BLOCK_SECONDS, seconds - start) * sample_rate
            t = np.arange(n) / sample_rate
            block = 0.02 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 1000 * t) * (t % 7 < 2)
            handle.write(block.astype(np.float32))
    return path


def peak_rss_mb() -> float:
    """The process's resident peak since the last reset (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("plot", [False, True], ids=["tags", "plot"])
@pytest.mark.parametrize("seconds", [360, 3600], ids=["6min", "1hour"])
def test_tag_long_file(benchmark, tmp_path, seconds, plot):
    torch.set_num_threads(1)   # fastsca.tag's default: 1 thread ran 3x faster than 2 on the shared 2-core box
    trained = cpu_profile_model()
    path = write_long_wav(tmp_path / f"long-{seconds}.wav", seconds)
    tag_file(trained, str(write_long_wav(tmp_path / "warm.wav", 10)))    # first-call work outside the timing
    Path("/proc/self/clear_refs").write_text("5")                           # resets VmHWM (Linux)
    before = peak_rss_mb()

    def run():
        # as `fastsca.tag FILE --plot fig.png` runs it: frame probabilities kept only as far as the figure needs
        asked = Asked(view=(0.0, 60.0), frames_until=60.0 + EVENT_REACH_SECONDS) if plot else Asked()
        tags = tag_file(trained, str(path), asked=asked)
        events = detect_events(tags.frame, tags.frame_seconds, trained.label_names, str(path))
        if plot:
            from fastsca.plot import plot_tags
            plot_tags(tags, trained, 5, tmp_path / "figure.png", events)
        return tags, events

    tags, events = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "tag"
    elapsed = benchmark.stats.stats.max
    # suite, provider and mode give it a row of the run's summary table (bench/conftest.py); the model
    # runs its reference attention (RunOptions(fused_attention=False)), hence 'eager'.
    benchmark.extra_info.update(suite="tag", provider="eager", mode=f"{seconds} s file{', --plot' if plot else ''}")
    benchmark.extra_info.update(audio_seconds=seconds, seconds_per_hour=round(elapsed * 3600 / seconds, 2),
                                peak_rss_mb=round(peak_rss_mb(), 1), rss_before_mb=round(before, 1),
                                frames=len(tags.frame), events=len(events), threads=torch.get_num_threads())
    assert len(tags.frame) == (610 if plot else seconds * 10) and np.isfinite(tags.frame).all()
