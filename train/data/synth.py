"""Built-in weakly labelled data: synthetic sound events over coloured noise, in the shard layout.

Each clip holds 1 to `max_events` events of distinct classes at random onsets, durations and SNRs
over pink or brown background noise; its clip labels are the classes present and its strong labels
the (onset, offset, class) of each event, so the same set serves tagging (weak labels, as AudioSet)
and localisation checks. The classes differ in ways a log-mel shows (steady vs swept vs modulated
lines, bands of noise, vertical click lines, harmonic combs); they are synthetic test signals, and their names
say what each signal is, not a real-world sound (`is_builtin_label_set` tells a model trained on them). Clip i of a split is drawn from its
own generator `default_rng([seed, split, i])`, so the data do not depend on the worker count and
train/eval never share a clip. `ensure_builtin` generates a config's two splits once, in parallel,
and caches them under a folder named by a hash of the config.
"""
import fcntl
import hashlib
import json
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastsca.builtin_classes import CLASS_NAMES
from train.data.parent_death import die_with_parent
from train.data.shards import ShardError, ShardIndex, ShardWriter

# Bump when the generated audio changes, so cached sets made by older code are not reused.
GENERATOR_VERSION = 1
# Clips a worker generates per task: large enough to amortise the pickling round trip (~20 MB),
# small enough to keep both cores busy to the end and the progress bar moving.
CLIPS_PER_TASK = 64
# Background level (about -34 dBFS RMS): leaves 20 dB of headroom for the loudest event.
BACKGROUND_RMS = 0.02
# Raised-cosine ramps at event edges, so an event's start is not itself a broadband click.
FADE_SECONDS = 0.01


@dataclass(frozen=True)
class SynthConfig:
    """What the built-in set holds; every field is part of its cache key."""

    n_classes: int = 10
    """Event classes used, the first n of CLASS_NAMES (at most 12)."""
    clip_seconds: float = 10.0
    """Clip length in seconds."""
    sample_rate: int = 16000
    """Sample rate in Hz."""
    n_train: int = 3000
    """Clips in the training split."""
    n_eval: int = 1000
    """Clips in the evaluation split."""
    seed: int = 0
    """Base seed; clip i of split s comes from default_rng([seed, s, i])."""
    max_events: int = 3
    """Events per clip are 1..max_events, of distinct classes."""
    snr_db: tuple[float, float] = (3.0, 20.0)
    """Range of event-to-background RMS ratios in dB, drawn uniformly."""
    event_seconds: tuple[float, float] = (1.0, 4.0)
    """Range of event durations in seconds, drawn uniformly."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(CLASS_NAMES):
            raise ValueError(f"n_classes must be in 1..{len(CLASS_NAMES)}, got {self.n_classes}")
        if not 1 <= self.max_events <= self.n_classes:
            raise ValueError(f"max_events must be in 1..n_classes ({self.n_classes}), got {self.max_events}")
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"n_train and n_eval must be >= 1, got {self.n_train}, {self.n_eval}")
        if self.sample_rate < 16000:
            raise ValueError(f"sample_rate must be >= 16000 (events reach 8 kHz), got {self.sample_rate}")
        if not 0 < self.event_seconds[0] <= self.event_seconds[1] <= self.clip_seconds:
            raise ValueError(f"event_seconds {self.event_seconds} must lie within (0, clip_seconds]")
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db range {self.snr_db} is reversed")

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.n_classes]

    def cache_key(self) -> str:
        """Short hash of the config and generator version: the cache folder's name."""
        text = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def _fade(event: np.ndarray, sample_rate: int) -> np.ndarray:
    n = min(int(FADE_SECONDS * sample_rate), event.shape[0] // 2)
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)).astype(np.float32)
    event[:n] *= ramp
    event[event.shape[0] - n:] *= ramp[::-1]
    return event


@lru_cache(maxsize=4)
def _tilt_gain(n: int, sr: int, tilt: float) -> np.ndarray:
    """Amplitude spectrum f^(-tilt/2) over the rfft bins (floored at 20 Hz, no DC): tilt 1 pink, 2 brown."""
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    gain = np.maximum(freqs, 20.0) ** (-tilt / 2)
    gain[0] = 0.0
    return gain.astype(np.float32)


@lru_cache(maxsize=1024)
def _fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: pocketfft is ~15x slower on lengths with large prime factors."""
    best, p5 = 1 << (n - 1).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            best = min(best, p35 << (-(-n // p35) - 1).bit_length())
            p35 *= 3
        p5 *= 5
    return best


def _noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float, tilt: float = 0.0) -> np.ndarray:
    """Noise with power only in [low, high] Hz, spectrum tilted by f^-tilt: random spectrum, one irfft.

    Uniform (not Gaussian) real and imaginary parts: each output sample sums thousands of bins, so it
    is Gaussian all the same, and uniform draws are 5x faster (0.3 vs 1.4 ms per 10 s clip).
    """
    size = _fast_length(n)
    lo, hi = int(np.ceil(low * size / sr)), min(int(high * size / sr) + 1, size // 2 + 1)
    spectrum = np.zeros(size // 2 + 1, np.complex64)
    spectrum[lo:hi] = (rng.random(2 * (hi - lo), np.float32) - 0.5).view(np.complex64)
    if tilt:
        spectrum *= _tilt_gain(size, sr, tilt)
    return np.fft.irfft(spectrum, size)[:n]


def _sine_of(frequency: np.ndarray, sr: int) -> np.ndarray:
    """sin of the running phase of an instantaneous-frequency track (Hz at each sample)."""
    cycles = np.cumsum(frequency, dtype=np.float64) / sr          # float64: float32 drifts over seconds
    return np.sin(2 * np.pi * (cycles % 1.0)).astype(np.float32)


def _event(name: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One event of class `name`, n samples long (float32), before level scaling."""
    t = np.arange(n, dtype=np.float32) / sr
    if name == "tone":
        return np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    if name in ("up-chirp", "down-chirp"):
        ratio = rng.uniform(4, 8) ** (t / t[-1])                     # exponential sweep over the event
        return _sine_of(rng.uniform(200, 800) * (ratio if name == "up-chirp" else ratio[::-1]), sr)
    if name == "noise-burst":
        centre = rng.uniform(800, 3000)
        return _noise(rng, n, sr, centre / 1.41, centre * 1.41)       # one octave around the centre
    if name == "click-train":
        period = int(rng.uniform(0.05, 0.1) * sr)                    # 2-4 frames apart: visible lines
        clicks = np.zeros(n, np.float32)
        clicks[::period] = 1.0
        return np.convolve(clicks, np.exp(-np.arange(16, dtype=np.float32) / 3), mode="same")  # ~1 ms clicks
    if name == "harmonic-stack":
        k = np.arange(1, 11, dtype=np.float32)[:, None]
        phases = rng.uniform(0, 2 * np.pi, (10, 1)).astype(np.float32)
        return (np.sin(2 * np.pi * rng.uniform(100, 300) * k * t + phases) / k).sum(axis=0)
    if name == "am-tone":
        envelope = 1 + np.sin(2 * np.pi * rng.uniform(3, 8) * t)
        return envelope * np.sin(2 * np.pi * rng.uniform(500, 2500) * t)
    if name == "warble":
        fc = rng.uniform(800, 2500)
        return _sine_of(fc * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(8, 15) * t)), sr)
    if name == "beeps":
        on, off = int(0.08 * sr), int(rng.uniform(0.06, 0.14) * sr)
        position = (np.arange(n) % (on + off)).astype(np.float32)
        pips = np.where(position < on, np.sin(np.pi * position / on) ** 2, 0)   # smooth pips: no edge clicks
        return pips * np.sin(2 * np.pi * rng.uniform(1000, 2000) * t)
    if name == "hiss":
        return _noise(rng, n, sr, 5000, 8000)
    if name == "siren":
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.5, 1.0) * t)
        return _sine_of(600 + 1000 * sweep, sr)
    if name == "thumps":
        local = (np.arange(n) % int(rng.uniform(0.3, 0.6) * sr)).astype(np.float32) / sr  # since last hit
        pitch = rng.uniform(60, 150) * (1 + np.exp(-local / 0.03))   # pitch drops after each hit
        envelope = (1 - np.exp(-local / 0.005)) * np.exp(-local / 0.08)   # 5 ms attack: a thud, not a click
        return envelope * _sine_of(pitch, sr)
    raise ValueError(f"unknown event class {name!r}")


def make_clip(config: SynthConfig, split: int, index: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Clip `index` of split 0 (train) or 1 (eval): waveform (clip_samples,) int16, target (K,) uint8,
    and events [(onset s, offset s, class)]."""
    rng = np.random.default_rng([config.seed, split, index])
    sr, n = config.sample_rate, config.clip_samples
    tilt = 1.0 if rng.random() < 0.5 else 2.0                        # pink or brown
    clip = _noise(rng, n, sr, 0.0, sr / 2, tilt)
    clip *= BACKGROUND_RMS / np.sqrt(np.mean(clip**2))
    target = np.zeros(config.n_classes, np.uint8)
    events = []
    for k in rng.choice(config.n_classes, size=rng.integers(1, config.max_events + 1), replace=False):
        length = int(rng.uniform(*config.event_seconds) * sr)
        start = int(rng.integers(0, n - length + 1))
        event = _fade(_event(CLASS_NAMES[k], rng, length, sr), sr)
        level = BACKGROUND_RMS * 10 ** (rng.uniform(*config.snr_db) / 20) / np.sqrt(np.mean(event**2))
        clip[start:start + length] += level * event
        target[k] = 1
        events.append((start / sr, (start + length) / sr, int(k)))
    peak = np.abs(clip).max()
    if peak > 0.99:                                                  # keep clear of int16 clipping
        clip *= 0.99 / peak
    return np.round(clip * 32767).astype(np.int16), target, events


def _make_clips(config: SynthConfig, split: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Clips start..stop-1 of a split, stacked; events carry their row in this chunk."""
    waveforms = np.empty((stop - start, config.clip_samples), np.int16)
    targets = np.empty((stop - start, config.n_classes), np.uint8)
    events = []
    for row, index in enumerate(range(start, stop)):
        waveforms[row], targets[row], clip_events = make_clip(config, split, index)
        events += [(row, onset, offset, k) for onset, offset, k in clip_events]
    return waveforms, targets, events


def write_split(path: Path, config: SynthConfig, split: int, pool: Executor) -> Path:
    """Generate split 0 (train) or 1 (eval) into the shard file `path` (atomically) on `pool`."""
    count, name = (config.n_train, "train") if split == 0 else (config.n_eval, "eval")
    mids = tuple(f"/synth/{c}" for c in config.class_names)
    chunks = [(start, min(start + CLIPS_PER_TASK, count)) for start in range(0, count, CLIPS_PER_TASK)]
    with ShardWriter(path, mids, config.class_names, config.sample_rate, config.clip_samples,
                     has_strong=True) as writer, \
            tqdm(total=count, desc=f"built-in {name} set", unit="clip") as bar:
        results = pool.map(_make_clips, *zip(*[(config, split, a, b) for a, b in chunks]))
        for (start, stop), (waveforms, targets, events) in zip(chunks, results):
            writer.add(waveforms, targets, [f"synth-{name}-{i:06d}" for i in range(start, stop)], events)
            bar.update(stop - start)
        return writer.commit()


def _is_whole(path: Path, clips: int) -> bool:
    """Whether a cached split opens as a shard of `clips` clips whose last clip reads."""
    try:
        index = ShardIndex.open(path)
        try:
            index.read(clips - 1)
        finally:
            index.close()
    except (ShardError, OSError, KeyError, IndexError):
        return False
    return index.num_clips == clips


def ensure_builtin(root: Path, config: SynthConfig = SynthConfig(), workers: int | None = None) -> tuple[Path, Path]:
    """(train, eval) shard files of the built-in set for `config`, generated under `root` on first use.

    Safe to call from several processes at once (e.g. every DDP rank): a file lock lets one generate
    while the others wait. A split interrupted mid-generation leaves only a `.tmp` file, regenerated
    next time; a cached split that no longer reads whole (truncated, overwritten) is regenerated too,
    with a message.
    """
    folder = Path(root) / f"synth-{config.cache_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / "train.h5", folder / "eval.h5")
    with open(folder / "generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for split, path in enumerate(paths):
            if path.exists() and not _is_whole(path, config.n_train if split == 0 else config.n_eval):
                print(f"the cached built-in set file {path} is damaged; regenerating it", file=sys.stderr, flush=True)
                path.unlink()
        missing = [(split, path) for split, path in enumerate(paths) if not path.exists()]
        if missing:
            (folder / "config.json").write_text(json.dumps(asdict(config), indent=1))
            with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=get_context("spawn"),
                                     initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                for split, path in missing:
                    write_split(path, config, split, pool)
    return paths
