"""Strongly labelled soundscapes mixed from isolated event clips over background recordings (train.mix).

Sources are read as train.pack reads own data (train/data/manifest.py: a manifest CSV or class folders),
one label per event clip; each source's recording is the manifest's group/recording column, else its file
stem. Whole recordings, events and backgrounds together, are dealt to the train/validation/test splits
(`deal_recordings`), so no recording, and no clip of it, is heard in two splits. Soundscape i of split s
is drawn from its own generator `default_rng([seed, s, i])`, so the same seed and sources give the same
soundscapes bit for bit, whatever else is mixed. What each soundscape holds, Scaper's way (its `add_event`
choices: label uniform over the split's classes, then a clip uniform over that class, onset uniform over
the time it fits, SNR uniform over a range):

- a background clip looped (with a short cross-fade at each seam) to the soundscape's length from a random
  start, scaled to BACKGROUND_RMS;
- 1..n events, each a whole event clip (its leading and trailing quiet cut, below `trim_db` under its
  loudest 10 ms), at an SNR in dB over the background: 20 log10(event RMS over its own samples /
  background RMS); Scaper measures both as LUFS (pyloudnorm), which weights frequencies, the RMS does not;
- the sum scaled down as a whole where it would exceed full scale (the SNRs kept), as Scaper's
  peak normalisation does.

Every source clip is decoded once and held in memory as float32 (230 MB an hour of audio at 16 kHz:
UrbanSound8K's 8732 clips of at most 4 s take at most 2.2 GB).

Scaper itself (PyPI 1.6.5, its latest) is not used, as tried on 2026-12-06: it requires `soxbindings`,
published for Linux only as a source package that builds against libsox's C headers (`sox.h`, not on the
package index); installed without it, it falls back to pysox, which runs the sox binary for each event and
background of every soundscape (rate and channel conversion, not only pitch and time shifts: without the
binary `generate` fails), and it uses `np.Inf`, gone from NumPy 2, for every event it places.
"""
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastsca.audio import AudioError, load_audio
from train.data.csv_meta import MetadataError
from train.data.manifest import (AUDIO_EXTENSIONS, AudioFiles, PackItem, merge_duplicates, read_folder, read_manifest,
                                 walk_files)
from train.data.segments import check_clip_length

SPLITS = ("train", "validation", "test")
# Background level, about -46 dBFS RMS: an event 30 dB above it (RMS 0.16) fits under full scale unless its
# peak is over 6 times its RMS; at 0.02 (the built-in set's), 29 of 42 UrbanSound8K training soundscapes had to
# be scaled down, at this level 5 of 42. int16 still gives it about 160 steps of RMS.
BACKGROUND_RMS = 0.005
# Cross-fade at each seam of a looped background: longer than two periods of mains hum (20 ms at 50 Hz), the
# lowest steady sound a background holds, so a seam fades rather than clicks; short against a 4 s clip.
SEAM_SECONDS = 0.05
# Frames of the quiet-trim: 10 ms, a log-mel hop's order, so the kept part starts where a frame sees sound.
TRIM_FRAME_SECONDS = 0.01
# Peak of a mixed soundscape once scaled: int16 storage leaves this much headroom below full scale.
PEAK_LIMIT = 0.99
# train.pack's stored rate, at which train.run must be able to train on the soundscapes' length.
PACKED_RATE = 16000
# Rates accepted: 8 kHz keeps the speech band; 384 kHz is the highest common audio interface rate.
MIN_RATE, MAX_RATE = 8000, 384000
# train.pack's longest clip (train/pack.py MAX_CLIP_SECONDS).
MAX_CLIP_SECONDS = 600.0
# Characters a class name cannot hold: it is written into CSV and TSV fields unquoted or comma-split.
BAD_NAME_CHARACTERS = (",", '"', "\t", "\n", "\r")


@dataclass(frozen=True)
class MixConfig:
    """What train.mix mixes; every field is part of its output folder's plan."""

    soundscapes: int = 1000
    """Soundscapes in all, dealt to the splits by `fractions`."""
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Shares of the soundscapes and of the source recordings for train, validation and test (sum 1)."""
    clip_seconds: float = 10.0
    """Soundscape length, seconds (a length train.run can train on once packed at 16 kHz)."""
    sample_rate: int = 16000
    """Sample rate of the soundscapes, Hz (the model's: 16000; train.pack resamples others to it)."""
    events: tuple[int, int] = (1, 3)
    """Fewest and most events per soundscape, drawn uniformly (at least 1: a clip needs a label)."""
    snr_db: tuple[float, float] = (6.0, 30.0)
    """Event SNR range over the background, dB, drawn uniformly (DCASE 2019 task 4's synthetic set: 6-30)."""
    trim_db: float = 40.0
    """An event clip's leading and trailing 10 ms frames this far below its loudest are cut (0: none)."""
    seed: int = 0
    """Base seed: the recordings' deal and soundscape i of split s (default_rng([seed, s, i]))."""

    def __post_init__(self) -> None:
        if self.soundscapes < 1:
            raise ValueError(f"--soundscapes {self.soundscapes}: give 1 or more")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or not math.isclose(sum(self.fractions), 1.0):
            raise ValueError(f"--split-fractions {','.join(f'{f:g}' for f in self.fractions)}: give three shares "
                             f"(train, validation, test), each >= 0, summing to 1, e.g. 0.7,0.15,0.15")
        if not 1 <= self.events[0] <= self.events[1]:
            raise ValueError(f"--events {self.events[0]},{self.events[1]}: give MIN,MAX with 1 <= MIN <= MAX")
        if not all(map(math.isfinite, self.snr_db)) or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"--snr {self.snr_db[0]:g},{self.snr_db[1]:g}: give LOW,HIGH dB with LOW <= HIGH")
        if not (math.isfinite(self.trim_db) and self.trim_db >= 0):
            raise ValueError(f"--trim-db {self.trim_db}: give 0 (no trim) or more dB")
        if not (math.isfinite(self.clip_seconds) and 0 < self.clip_seconds <= MAX_CLIP_SECONDS):
            raise ValueError(f"--clip-seconds {self.clip_seconds}: give a length in (0, {MAX_CLIP_SECONDS:g}]")
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ValueError(f"--sample-rate {self.sample_rate}: give {MIN_RATE} to {MAX_RATE} Hz (16000: the model's)")
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: give 0 or more")
        check_clip_length(round(self.clip_seconds * PACKED_RATE), PACKED_RATE)

    @property
    def samples(self) -> int:
        """Samples per soundscape."""
        return round(self.clip_seconds * self.sample_rate)


@dataclass(frozen=True)
class Source:
    """One source clip: an event of one class, or a background."""

    name: str
    """The clip as its manifest or folder names it (for the report)."""
    path: str
    """The audio file."""
    label: str
    """Its class (a background's class, or "background" for a --backgrounds folder's files)."""
    recording: str
    """The recording it was cut from: no two splits share one."""


@dataclass(frozen=True)
class Event:
    """One event placed in a soundscape."""

    source: int
    """Index of its clip among the event sources."""
    onset: int
    """First sample in the soundscape."""
    snr_db: float
    """Its level over the background, dB."""


@dataclass(frozen=True)
class Plan:
    """What one soundscape holds, before any audio is touched."""

    background: int
    """Index of its clip among the background sources."""
    background_start: int
    """Sample of the looped background clip the soundscape starts at."""
    events: tuple[Event, ...]
    """Its events, in the order drawn."""


def read_sources(manifest: Path | None, audio_dir: Path, backgrounds: Path | None,
                 background_classes: tuple[str, ...]) -> tuple[list[Source], list[Source], list[tuple[str, str]]]:
    """(event sources, background sources, skipped (clip, reason)): the manifest's rows or `audio_dir`'s class
    folders, those of `background_classes` as backgrounds, plus every audio file under `backgrounds`. A row
    whose file is missing or ambiguous, or with several labels, is skipped; rows naming one file are one clip
    (train.pack's rule: `merge_duplicates`)."""
    if not audio_dir.is_dir():
        raise ValueError(f"--audio-dir {audio_dir}: no such folder; give the folder holding the event clips")
    if manifest is not None:
        items, skipped = merge_duplicates(read_manifest(manifest, AudioFiles(audio_dir))[0])
    else:
        items, skipped = read_folder(audio_dir)
    found = {key for item in items for key in item.labels}
    unknown = sorted(set(background_classes) - found)
    if unknown:
        raise ValueError(f"--background-classes {','.join(unknown)}: no such class among the clips' "
                         f"({', '.join(sorted(found))}); give classes the clips have")
    events, background = [], []
    for item in items:
        reason = item.problem or (f"label: {len(item.labels)} labels ({','.join(item.labels)}); an event clip "
                                  f"needs one" if len(item.labels) != 1 else "")
        if reason:
            skipped.append((item.name, reason))
            continue
        (background if item.labels[0] in background_classes else events).append(_source(item))
    if backgrounds is not None:
        background += _folder_backgrounds(backgrounds)
    bad = sorted({s.label for s in events if any(c in s.label for c in BAD_NAME_CHARACTERS)})
    if bad:
        raise ValueError(f"class {bad[0]!r} holds a comma, quote, tab or line end, which the segment CSV cannot "
                         f"carry; rename it")
    return events, background, skipped


def _source(item: PackItem) -> Source:
    return Source(item.name, item.path, item.labels[0], item.group or Path(item.path).stem)


def _folder_backgrounds(folder: Path) -> list[Source]:
    """Every audio file under `folder`, each its own recording (its stem)."""
    if not folder.is_dir():
        raise ValueError(f"--backgrounds {folder}: no such folder; give a folder of background recordings")
    return [Source(str(path.relative_to(folder)), str(path), "background", f"background:{path.stem}")
            for path in sorted(walk_files(folder)) if path.suffix.lower() in AUDIO_EXTENSIONS]


def deal_recordings(sources: list[Source], fractions: tuple[float, ...], seed: int) -> dict[str, int]:
    """recording -> split index, whole recordings dealt class by class (a recording under the class most of its
    clips have), rarest class first. A class's smallest recordings go first, one to each split with a share
    (the smallest to the smallest share; with fewer recordings than splits, the largest shares first), so small
    classes reach every split they can; the rest, in a seeded order, each to the split furthest below its share
    of the class's clips. Equal sizes are ordered by the seed."""
    labels: dict[str, Counter] = {}
    for source in sources:
        labels.setdefault(source.recording, Counter())[source.label] += 1
    clips = {rec: sum(counts.values()) for rec, counts in labels.items()}
    home = {rec: counts.most_common(1)[0][0] for rec, counts in labels.items()}
    per_class = Counter(s.label for s in sources)
    share = np.asarray(fractions, np.float64)
    ranked = [k for k in np.argsort(-share, kind="stable") if share[k] > 0]   # largest share first
    rng = np.random.default_rng([seed, 0xDEA1])
    dealt: dict[str, int] = {}
    for label in sorted(per_class, key=lambda c: (per_class[c], c)):
        recordings = sorted(rec for rec in clips if home[rec] == label)
        tie = rng.permutation(len(recordings))
        by_size = [recordings[k] for k in sorted(range(len(recordings)), key=lambda k: (clips[recordings[k]], tie[k]))]
        covered = ranked[:len(by_size)]
        taken = np.zeros(len(share))
        for rec, split in zip(by_size, reversed(covered)):
            dealt[rec], taken[split] = int(split), taken[split] + clips[rec]
        rest = by_size[len(covered):]
        for k in rng.permutation(len(rest)):
            want = np.where(share > 0, share * per_class[label] - taken, -np.inf)
            split = int(np.argmax(want))
            dealt[rest[k]], taken[split] = split, taken[split] + clips[rest[k]]
    return dealt


def decode_sources(sources: list[Source], config: MixConfig, trim: bool
                   ) -> tuple[list[Source], list[np.ndarray], list[tuple[str, str]]]:
    """(the sources that decode, their float32 mono audio at the config's rate, skipped (clip, reason)):
    event clips (`trim`) cut to their sound and to the soundscape's length; an undecodable, empty or silent
    clip is skipped, never fatal."""
    kept, audio, skipped = [], [], []
    for source in tqdm(sources, desc="decoding " + ("events" if trim else "backgrounds"), unit="clip",
                       disable=not sources):
        try:
            waveform = load_audio(source.path, config.sample_rate)
        except AudioError as error:
            skipped.append((source.name, f"undecodable: {error}"))
            continue
        if trim:
            waveform = trim_quiet(waveform, config.sample_rate, config.trim_db)[:config.samples]
        if not np.abs(waveform).max(initial=0.0) > 0:
            skipped.append((source.name, f"silent: {source.path} holds no sound"))
            continue
        kept.append(source)
        audio.append(waveform)
    return kept, audio, skipped


def trim_quiet(waveform: np.ndarray, sample_rate: int, trim_db: float) -> np.ndarray:
    """`waveform` without its leading and trailing 10 ms frames whose RMS is `trim_db` or more below the loudest
    frame's (the whole of it where trim_db is 0 or it is silent)."""
    frame = max(1, round(TRIM_FRAME_SECONDS * sample_rate))
    count = math.ceil(len(waveform) / frame)
    if trim_db == 0 or count == 0:
        return waveform
    padded = np.zeros(count * frame, np.float64)
    padded[:len(waveform)] = waveform
    rms = np.sqrt((padded.reshape(count, frame) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-trim_db / 20))
    if len(loud) == 0:
        return waveform
    return waveform[loud[0] * frame:(loud[-1] + 1) * frame]


def members_by_class(events: list[Source]) -> dict[str, list[int]]:
    """class -> indices of its clips among `events`, classes sorted (the order `draw_plan` draws from)."""
    by_class: dict[str, list[int]] = {}
    for k, source in enumerate(events):
        by_class.setdefault(source.label, []).append(k)
    return dict(sorted(by_class.items()))


def draw_plan(config: MixConfig, split: int, index: int, by_class: dict[str, list[int]], lengths: list[int],
              background_lengths: list[int]) -> Plan:
    """Soundscape `index` of `split` from its own generator: a background (of `background_lengths`' clips) and
    its start, then each event's class (uniform over `by_class`, `members_by_class`), clip (uniform in the
    class), onset (uniform where its length in `lengths` fits) and SNR (uniform over the range)."""
    rng = np.random.default_rng([config.seed, split, index])
    background = int(rng.integers(len(background_lengths)))
    start = int(rng.integers(background_lengths[background]))
    classes = list(by_class.values())
    placed = []
    for _ in range(int(rng.integers(config.events[0], config.events[1] + 1))):
        members = classes[int(rng.integers(len(classes)))]
        source = members[int(rng.integers(len(members)))]
        onset = int(rng.integers(config.samples - lengths[source] + 1))
        placed.append(Event(source, onset, float(rng.uniform(*config.snr_db))))
    return Plan(background, start, tuple(placed))


def loop_to(waveform: np.ndarray, start: int, samples: int, seam: int) -> np.ndarray:
    """`samples` of `waveform` played in a loop from `start`, consecutive copies cross-faded over `seam`
    samples (linear ramps that sum to 1); a clip at least `samples` + `start` long is simply cut."""
    if start + samples <= len(waveform):
        return waveform[start:start + samples].astype(np.float32)
    seam = min(seam, len(waveform) // 2)
    hop = len(waveform) - seam
    copy = waveform.astype(np.float64)
    if seam:
        ramp = np.arange(1, seam + 1) / (seam + 1)
        copy[:seam] *= ramp
        copy[-seam:] *= ramp[::-1]
    copies = math.ceil((start + samples + seam) / hop) + 1
    looped = np.zeros(hop * copies + seam)
    for k in range(copies):
        looped[k * hop:k * hop + len(copy)] += copy
    # the first copy's faded-in head has no copy before it: start past it
    return looped[seam + start:seam + start + samples].astype(np.float32)


def render(plan: Plan, config: MixConfig, audio: list[np.ndarray], background_audio: list[np.ndarray]
           ) -> tuple[np.ndarray, float]:
    """(the soundscape, float32 in [-1, 1]; the gain it was scaled by to fit under full scale, 1 if none)."""
    seam = round(SEAM_SECONDS * config.sample_rate)
    mix = loop_to(background_audio[plan.background], plan.background_start, config.samples, seam).astype(np.float64)
    mix *= BACKGROUND_RMS / max(_rms(mix), np.finfo(np.float32).tiny)
    for event in plan.events:
        clip = audio[event.source].astype(np.float64)
        clip *= BACKGROUND_RMS * 10 ** (event.snr_db / 20) / _rms(clip)
        mix[event.onset:event.onset + len(clip)] += clip
    gain = min(1.0, PEAK_LIMIT / np.abs(mix).max())
    return (mix * gain).astype(np.float32), gain


def _rms(waveform: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))


def check_out_apart(out: Path, folders: list[tuple[str, Path | None]]) -> None:
    """ValueError (one line) where --out is one of the source folders (given as (option, folder)) or inside one:
    its soundscapes would be read as source clips by the next run."""
    real = out.resolve()
    for option, folder in folders:
        if folder is not None and real.is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out} is inside {option} {folder}: a later run would read its soundscapes as "
                             f"source clips; choose an --out outside it")


def require_sources(split: str, events: list[Source], backgrounds: list[Source]) -> None:
    """MetadataError (one line) when a split that gets soundscapes has no event or no background clip."""
    for what, sources in (("event", events), ("background", backgrounds)):
        if not sources:
            raise MetadataError(f"the {split} split was dealt no {what} recording; give more {what} recordings "
                                f"(or --split-fractions with 0 for {split})")
