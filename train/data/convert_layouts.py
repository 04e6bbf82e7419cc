"""The two HDF5 layouts AudioSet is commonly shared in, read for `python -m train.convert`.

- `panns`: PANNs' packed waveforms (qiuqiangkong/audioset_tagging_cnn, utils/dataset.py): `audio_name`
  (N,) `S20` like `b'Y--PJHxphWEs.wav'`, `waveform` (N, 320000) int16 (float x 32767, truncated), `target`
  (N, 527) bool in class_labels_indices.csv order, attribute `sample_rate` = 32000. A clip PANNs could not
  download keeps its row, never written: name `b''`, all-zero waveform and target. Older PANNs files hold
  float32 waveforms; they are read too. Without the `sample_rate` attribute, the rate is the width / 10 s.
- `mp3`: PaSST's files (kkoutini/PaSST, audioset/prepare_scripts/create_h5pymp3_dataset.py), which
  EfficientAT (fschmid56/EfficientAT, datasets/audioset.py) reads as they are: `audio_name` (N,) `S20` like
  `b'Y--PJHxphWEs.mp3'` (`b'00/Y...mp3'` in the unbalanced file), `mp3` (N,) variable-length uint8, each a
  whole mp3 file (32 kHz mono, from ffmpeg), `target` (N, 66) uint8: the 527 columns packed 8 to a byte by
  `np.packbits` (first column in the high bit). An unpacked (N, K) bool or integer target is read too.

A label list must be the one the file was made with: its target columns carry no names. A width that does
not fit the list, set bits past the list's end in a packed target, or a 527-class list other than
AudioSet's own is refused (`SourceError`, one line naming the file and what to do).
"""
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import soundfile
import soxr

from fastsca.audio import AudioError, TruncatedAudioError, fit_length
from train.data.csv_meta import LabelSet
from train.data.shards import FORMAT, clipped_note, to_stored

LAYOUTS = ("panns", "mp3")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg")
# sha1 of AudioSet's 527 mids, newline-joined, in class_labels_indices.csv order: PANNs and PaSST built
# their targets on that list, so a 527-class list that differs from it names the columns wrongly.
AUDIOSET_MIDS_SHA1 = "2b278c3b7084d7a751eee7a5ef612de98817a7bf"
# PANNs' clips are 10 s: the source rate of a waveform dataset without a `sample_rate` attribute.
PANNS_CLIP_SECONDS = 10
# Rows read at a time: PANNs 32 x 320000 int16 = 20 MB; mp3 rows are ~40-160 kB; names and targets are small.
WAVEFORM_BLOCK_ROWS = 32
MP3_BLOCK_ROWS = 128
SCAN_BLOCK_ROWS = 65536


class SourceError(ValueError):
    """A source file that cannot be converted; the message names the file and what to do."""


@dataclass(frozen=True)
class Source:
    """One source file, checked: where it is, its layout and how to read its rows."""

    path: Path
    """The HDF5 file."""
    layout: str
    """One of LAYOUTS."""
    rows: int
    """Rows in the file (placeholders included)."""
    source_rate: int
    """Sample rate of the `waveform` dataset, Hz (panns); 0 for mp3, whose files carry their own."""
    packed_target: bool
    """Whether `target` holds np.packbits bytes rather than one column per class."""

    def describe(self) -> str:
        rate = f", {self.source_rate} Hz" if self.layout == "panns" else ""
        return f"{self.path}: {self.layout} layout, {self.rows} rows{rate}"


@dataclass(frozen=True)
class Row:
    """One converted source row: a clip, or the reason it was skipped."""

    name: str
    """The clip's name as train.pack names clips (`Y<YTID>`), or `FILE:ROW` for a row without one."""
    waveform: np.ndarray | None
    """(clip_samples,) int16 at the output rate, None when skipped."""
    target: np.ndarray
    """(K,) uint8 multi-hot."""
    reason: str = ""
    """Why the row was skipped, `kind: detail`; empty when converted."""
    note: str = ""
    """What was changed in a converted row worth reporting (samples clipped at full scale); empty for none."""


def clip_name(raw: bytes) -> str:
    """`b'00/Y--PJHxphWEs.mp3'` -> `'Y--PJHxphWEs'`: the folder and audio extension dropped, as train.pack names
    clips. Empty for PANNs' unwritten rows."""
    name = raw.decode("utf-8", errors="replace").strip().strip("\x00").rsplit("/", 1)[-1]
    stem, dot, extension = name.rpartition(".")
    return stem if dot and f".{extension.lower()}" in AUDIO_EXTENSIONS else name


def labels_sha1(labels: LabelSet) -> str:
    return hashlib.sha1("\n".join(labels.mids).encode()).hexdigest()


def _open(path: Path) -> h5py.File:
    if path.is_dir():
        raise SourceError(f"{path} is a folder; pass the .h5/.hdf files in it (e.g. {path}/*.h5)")
    if not path.is_file():
        raise SourceError(f"{path}: no such file; check the path")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        detail = str(error).splitlines()[0]
        if "truncated" in detail:
            raise SourceError(f"{path}: truncated HDF5 file ({detail}); it was cut short while copying or "
                              f"downloading: copy it again") from None
        raise SourceError(f"{path}: not an HDF5 file ({detail}); pass PANNs' waveform .h5 files or PaSST/"
                          f"EfficientAT's *_mp3.hdf files") from None


def _detect(path: Path, handle: h5py.File, layout: str | None) -> str:
    if handle.attrs.get("format") == FORMAT:
        raise SourceError(f"{path} is already a fastsca shard: train.run reads it as it is, nothing to convert")
    if layout is None:
        if "waveform" in handle:
            layout = "panns"
        elif "mp3" in handle:
            layout = "mp3"
        elif "hdf5_path" in handle or "index_in_hdf5" in handle:
            raise SourceError(f"{path} is a PANNs index file (it points into waveform files); convert the waveform "
                              f".h5 files named in its hdf5_path instead")
        else:
            raise SourceError(f"{path}: unknown layout (datasets: {', '.join(sorted(handle)) or 'none'}); expected "
                              f"PANNs' waveform/target/audio_name or PaSST/EfficientAT's mp3/target/audio_name")
    audio = "waveform" if layout == "panns" else "mp3"
    missing = [name for name in (audio, "target", "audio_name") if name not in handle]
    if missing:
        raise SourceError(f"{path}: no {', '.join(missing)} dataset, which the {layout} layout needs (datasets: "
                          f"{', '.join(sorted(handle)) or 'none'}); check the file or give another --layout")
    return layout


def _check_pad_bits(path: Path, target: h5py.Dataset, num_classes: int) -> None:
    """Raise if a packed target sets a column past `num_classes` (the list is shorter than the file's)."""
    spare = 8 * target.shape[1] - num_classes
    if spare == 0:
        return
    for start in range(0, target.shape[0], SCAN_BLOCK_ROWS):
        last = target[start:start + SCAN_BLOCK_ROWS, -1] & np.uint8((1 << spare) - 1)
        if last.any():
            first = int(np.flatnonzero(last)[0])
            column = 8 * (target.shape[1] - 1) + int(np.flatnonzero(np.unpackbits(last[first:first + 1]))[0])
            row = start + first
            raise SourceError(f"{path}: row {row} sets target column {column}, past the {num_classes} classes of "
                              f"--labels: the file was made with a longer label list; pass that one "
                              f"(AudioSet's class_labels_indices.csv has 527)")


def _check_target(path: Path, target: h5py.Dataset, layout: str, labels: LabelSet) -> bool:
    """Check the target's shape against `labels`; returns whether it is packed."""
    k = len(labels.mids)
    if target.ndim != 2:
        raise SourceError(f"{path}: target has shape {target.shape}, expected (rows, classes)")
    if target.dtype.kind == "f":
        raise SourceError(f"{path}: target is {target.dtype} (soft labels?); fastsca stores multi-hot 0/1 targets: "
                          f"threshold them into a bool target first")
    if target.dtype.kind not in "biu":
        raise SourceError(f"{path}: target is {target.dtype}, expected bool or uint8")
    width = target.shape[1]
    packed = layout == "mp3" and k > 1 and width == (k + 7) // 8 and target.dtype == np.uint8
    if not packed and width != k:
        held = f"{width} packed bytes a row (up to {8 * width} classes)" if layout == "mp3" else f"{width} columns"
        raise SourceError(f"{path}: target holds {held} but --labels lists {k} classes; pass the label list the file "
                          f"was made with (AudioSet's class_labels_indices.csv: 527 classes)")
    if packed:
        _check_pad_bits(path, target, k)
    return packed


def open_source(path: str | Path, labels: LabelSet, layout: str | None = None) -> Source:
    """Open and check one source file (layout detected from its datasets unless given)."""
    path = Path(path)
    if len(labels.mids) == 527 and labels_sha1(labels) != AUDIOSET_MIDS_SHA1:
        raise SourceError(f"{path}: --labels lists 527 classes but not AudioSet's, in its order; PANNs and PaSST "
                          f"made their targets with AudioSet's class_labels_indices.csv: pass that file")
    with _open(path) as handle:
        layout = _detect(path, handle, layout)
        audio = handle["waveform" if layout == "panns" else "mp3"]
        counts = {name: (handle[name].shape or (0,))[0] for name in (audio.name[1:], "target", "audio_name")}
        if len(set(counts.values())) != 1:
            held = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise SourceError(f"{path}: datasets hold different row counts ({held}); the file is damaged: copy "
                              f"or make it again")
        if counts["target"] == 0:
            raise SourceError(f"{path}: the file holds no rows; nothing to convert")
        packed = _check_target(path, handle["target"], layout, labels)
        source_rate = 0
        if layout == "panns":
            if audio.ndim != 2 or audio.dtype.kind not in "if":
                raise SourceError(f"{path}: waveform is {audio.dtype} {audio.shape}, expected (rows, samples) int16")
            source_rate = int(handle.attrs.get("sample_rate", audio.shape[1] // PANNS_CLIP_SECONDS))
        elif audio.ndim != 1 or h5py.check_vlen_dtype(audio.dtype) != np.uint8:
            raise SourceError(f"{path}: mp3 is {audio.dtype} {audio.shape}, expected variable-length uint8 rows")
        return Source(path, layout, counts["target"], source_rate, packed)


def scan_names(source: Source) -> list[str]:
    """Every row's clip name ("" for an unnamed row), read in blocks."""
    names = []
    with h5py.File(source.path, "r") as handle:
        dataset = handle["audio_name"]
        for start in range(0, source.rows, SCAN_BLOCK_ROWS):
            names += [clip_name(raw if isinstance(raw, bytes) else str(raw).encode())
                      for raw in dataset[start:start + SCAN_BLOCK_ROWS]]
    return names


def to_int16(waveform: np.ndarray, rate: int, sample_rate: int, clip_samples: int) -> tuple[np.ndarray, int]:
    """float mono at `rate` -> (clip_samples,) int16 at `sample_rate` (soxr HQ, cut or zero-padded, as
    train.pack) and the count of samples beyond full scale, stored at full scale."""
    if rate != sample_rate:
        waveform = soxr.resample(waveform, rate, sample_rate, quality="HQ")
    return to_stored(fit_length(waveform, clip_samples))


def full_scale(waveform: np.ndarray) -> np.ndarray:
    """A stored waveform row as float32 at full scale +-1: integer PCM divided by its type's largest value
    (PANNs' int16: 32767; int32 PCM: 2**31 - 1), float as it is."""
    if waveform.dtype.kind == "i":
        return (waveform / np.iinfo(waveform.dtype).max).astype(np.float32)
    return waveform.astype(np.float32)


def decode_mp3(data: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """One mp3 file held as uint8 -> (float32 mono, its rate); AudioError when it does not decode whole."""
    if data.size == 0:
        raise AudioError(f"the mp3 holds no bytes ({where})")
    try:
        info = soundfile.info(io.BytesIO(data.tobytes()))
        audio, rate = soundfile.read(io.BytesIO(data.tobytes()), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"libsndfile cannot read it ({getattr(error, 'error_string', error)}) ({where})") from None
    if audio.shape[0] == 0:
        raise AudioError(f"the mp3 holds no samples ({where})")
    if audio.shape[0] < info.frames:    # libsndfile returns what is there of a cut file (fastsca/audio.py)
        raise TruncatedAudioError(f"the mp3 declares {info.frames / rate:.2f} s but holds "
                                  f"{audio.shape[0] / rate:.2f} s ({where})")
    return (audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]), rate


class RowReader:
    """Reads a source's rows in blocks and turns each into a `Row` at the output rate and length."""

    def __init__(self, source: Source, num_classes: int, sample_rate: int, clip_samples: int) -> None:
        self.source = source
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.handle = h5py.File(source.path, "r")
        self.audio = self.handle["waveform" if source.layout == "panns" else "mp3"]
        self.block_rows = WAVEFORM_BLOCK_ROWS if source.layout == "panns" else MP3_BLOCK_ROWS

    def _targets(self, start: int, stop: int) -> np.ndarray:
        block = self.handle["target"][start:stop]
        if self.source.packed_target:
            return np.unpackbits(block, axis=-1, count=self.num_classes)
        return (block != 0).astype(np.uint8)

    def _convert(self, row: int, name: str, audio: np.ndarray, target: np.ndarray) -> Row:
        label = name or f"{self.source.path.name}:{row}"
        where = f"{self.source.path.name} row {row}"
        if self.source.layout == "panns":
            silent = not audio.any()
            if not name:
                kind = ("placeholder: no name and an all-zero waveform, PANNs' row for a clip it could not download"
                        if silent else "unnamed: the row has audio but no audio_name")
                return Row(label, None, target, f"{kind} ({where})")
            waveform = full_scale(audio)
            rate = self.source.source_rate
            if not np.isfinite(waveform).all():
                bad = int(np.count_nonzero(~np.isfinite(waveform)))
                return Row(label, None, target, f"nonfinite: {bad} sample(s) are NaN or infinite, which would make "
                                                f"every score NaN ({where})")
        else:
            if not name:
                return Row(label, None, target, f"unnamed: the row has no audio_name ({where})")
            try:
                waveform, rate = decode_mp3(audio, where)
            except AudioError as error:
                kind = "truncated" if isinstance(error, TruncatedAudioError) else "undecodable"
                return Row(label, None, target, f"{kind}: {error}")
            silent = not waveform.any()
        if silent:
            return Row(label, None, target, f"silent: every sample is zero, so none of its labels can be heard "
                                            f"({where})")
        stored, clipped = to_int16(waveform, rate, self.sample_rate, self.clip_samples)
        return Row(label, stored, target, note=f"{clipped_note(clipped)} ({where})" if clipped else "")

    def _read_rows(self, start: int, stop: int, names: list[str]) -> list[Row]:
        audio, targets = self.audio[start:stop], self._targets(start, stop)
        return [self._convert(row, name, a, t) for row, name, a, t in zip(range(start, stop), names, audio, targets)]

    def read(self, start: int, stop: int, names: list[str]) -> list[Row]:
        """Rows start..stop-1 (`names`: their clip names); a block HDF5 cannot read is retried row by row, and a
        row that still fails is skipped as unreadable."""
        try:
            return self._read_rows(start, stop, names)
        except OSError:
            pass
        rows = []
        for row, name in zip(range(start, stop), names):
            try:
                rows += self._read_rows(row, row + 1, [name])
            except OSError as error:
                reason = f"unreadable: HDF5 cannot read it ({str(error).splitlines()[0]}); copy the file again"
                rows.append(Row(name or f"{self.source.path.name}:{row}", None,
                                np.zeros(self.num_classes, np.uint8), f"{reason} ({self.source.path.name} row {row})"))
        return rows

    def close(self) -> None:
        self.handle.close()
