"""train.convert on small files written here in PANNs' and PaSST/EfficientAT's layouts: random tones (resampled
content checked against the analytic tone), placeholder, silent, truncated, undecodable and duplicate rows, odd
row counts; parallel == serial, resume, Ctrl-C, a block HDF5 cannot read, and one-line errors for bad inputs."""
import csv
import io
import json
import shutil
import string
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile

from train.data import convert_layouts
from train.convert import ConvertConfig, convert, main
from train.data.convert_layouts import RowReader, SourceError, clip_name, open_source
from train.data.csv_meta import read_labels
from train.data.shards import ShardIndex, ShardWriter

AUDIOSET = Path(__file__).parents[2] / "shared" / "audioset"
LABELS = 'index,mid,display_name\n0,/m/a,"Alpha"\n1,/m/b,"Beta, b"\n2,/t/c,"Gamma"\n'
SOURCE_RATE = 32000
YTID_CHARS = np.array(list(string.ascii_letters + string.digits + "-_"))


def tone(rng, hz: float, seconds: float) -> tuple[np.ndarray, float, float, float]:
    """A sine at SOURCE_RATE of random amplitude and phase: (samples, hz, amplitude, phase)."""
    amplitude, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    return amplitude * np.sin(2 * np.pi * hz * t + phase), hz, amplitude, phase


def mp3_bytes(samples: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SOURCE_RATE, format="MP3")
    return np.frombuffer(buffer.getvalue(), np.uint8)


def make_sources(root: Path) -> dict:
    """labels.csv, panns.h5 (7 rows) and mp3.hdf (5 rows); returns what each row should become."""
    rng = np.random.default_rng(43)
    (root / "labels.csv").write_text(LABELS)
    ytids = ["".join(rng.choice(YTID_CHARS, 11)) for _ in range(9)]
    hz = rng.integers(1000, 70000, 6) / 10                        # on the 0.1 Hz grid of a 10 s FFT
    targets = rng.integers(0, 2, (12, 3)).astype(bool)
    targets[2] = False                                            # PANNs never writes a placeholder's target
    # PANNs: tone, tone, placeholder, silent, 12 kHz tone (above 8 kHz: filtered out), tone, tone
    panns_tones = {0: tone(rng, hz[0], 10), 1: tone(rng, hz[1], 10), 4: tone(rng, 12000, 10),
                   5: tone(rng, hz[2], 10), 6: tone(rng, hz[3], 10)}
    waveform = np.zeros((7, 10 * SOURCE_RATE), np.int16)
    for row, (samples, *_) in panns_tones.items():
        waveform[row] = (samples * 32767).astype(np.int16)        # PANNs' float32_to_int16 truncates
    names = [f"Y{ytids[i]}.wav".encode() if i != 2 else b"" for i in range(7)]
    with h5py.File(root / "panns.h5", "w") as handle:
        handle.create_dataset("audio_name", data=np.array(names, dtype="S20"))
        handle.create_dataset("waveform", data=waveform)
        handle.create_dataset("target", data=targets[:7])
        handle.attrs.create("sample_rate", SOURCE_RATE, dtype=np.int32)
    # PaSST: 10 s tone, 3 s tone (zero-padded), truncated, not an mp3, the name of PANNs' row 0
    mp3_tones = {0: tone(rng, hz[4], 10), 1: tone(rng, hz[5], 3)}
    cut = mp3_bytes(tone(rng, 500, 10)[0])
    mp3s = [mp3_bytes(mp3_tones[0][0]), mp3_bytes(mp3_tones[1][0]), cut[:len(cut) // 3],
            rng.integers(0, 256, 2000).astype(np.uint8), mp3_bytes(tone(rng, 800, 10)[0])]
    with h5py.File(root / "mp3.hdf", "w") as handle:
        handle.create_dataset("audio_name", data=np.array([f"Y{ytids[7]}.mp3", f"00/Y{ytids[8]}.mp3", "00/Ycut.mp3",
                                                           "Yjunk.mp3", f"Y{ytids[0]}.mp3"], dtype="S20"))
        handle.create_dataset("mp3", (5,), dtype=h5py.vlen_dtype(np.uint8))
        for row, data in enumerate(mp3s):
            handle["mp3"][row] = data
        handle.create_dataset("target", data=np.packbits(targets[7:], axis=-1))
    return {"ytids": ytids, "targets": targets, "panns_tones": panns_tones, "mp3_tones": mp3_tones}


def config(root: Path, out: str = "out", **overrides) -> ConvertConfig:
    fields = dict(sources=(root / "panns.h5", root / "mp3.hdf"), labels=root / "labels.csv", out=root / out,
                  shard_size=3, workers=1)
    return ConvertConfig(**{**fields, **overrides})


def shard_contents(out: Path) -> dict:
    """Every dataset and attribute of every shard, and the report, for comparing two conversions."""
    contents = {"report": (out / "convert_report.csv").read_text(),
                "index": json.loads((out / "index.json").read_text())}
    for path in sorted(out.glob("shard_*.h5")):
        with h5py.File(path, "r") as handle:
            contents[path.name] = ({name: handle[name][:] for name in handle},
                                   {name: np.asarray(value).tolist() for name, value in handle.attrs.items()})
    return contents


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["report"] == b["report"] and a["index"] == b["index"]
    for name in a.keys() - {"report", "index"}:
        assert a[name][1] == b[name][1], name
        assert a[name][0].keys() == b[name][0].keys(), name
        for dataset in a[name][0]:
            np.testing.assert_array_equal(a[name][0][dataset], b[name][0][dataset], err_msg=f"{name} {dataset}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Both sources converted serially, reading 2 rows at a time; returns (root, expected, summary, reads)."""
    root = tmp_path_factory.mktemp("convert")
    expected = make_sources(root)
    reads = []
    read_rows = RowReader._read_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert_layouts, "WAVEFORM_BLOCK_ROWS", 2)
        patch.setattr(convert_layouts, "MP3_BLOCK_ROWS", 2)
        patch.setattr(RowReader, "_read_rows", lambda self, start, stop, names:
                      reads.append((self.source.path.name, start, stop)) or read_rows(self, start, stop, names))
        summary = convert(config(root))
    return root, expected, summary, reads


@pytest.fixture
def converted_copy(converted, tmp_path):
    """A private copy of the converted tree, for tests that resume or interrupt."""
    root, expected, summary, _ = converted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return tmp_path, expected, shard_contents(root / "out")


def test_converts_panns_and_mp3_rows_into_shards(converted):
    root, expected, summary, reads = converted
    out, ytids, targets = root / "out", expected["ytids"], expected["targets"]
    assert summary == {"converted": 7, "shards": 5, "resumed_shards": 0, "skipped": 5, "skipped_duplicate": 1,
                       "skipped_placeholder": 1, "skipped_silent": 1, "skipped_truncated": 1, "skipped_undecodable": 1}
    assert reads == [("panns.h5", 0, 2), ("panns.h5", 2, 3), ("panns.h5", 3, 5), ("panns.h5", 5, 6),
                     ("panns.h5", 6, 7), ("mp3.hdf", 0, 2), ("mp3.hdf", 2, 3), ("mp3.hdf", 3, 5)]
    index = json.loads((out / "index.json").read_text())
    assert [s["clips"] for s in index["shards"]] == [2, 2, 1, 2, 0] and index["num_clips"] == 7
    assert index["sample_rate"] == 16000 and index["clip_samples"] == 160000
    split = ShardIndex.open(out)
    assert split.label_mids == ("/m/a", "/m/b", "/t/c") and split.label_names == ("Alpha", "Beta, b", "Gamma")

    names, clips, stored_targets = [], [], []
    for shard in sorted(out.glob("shard_*.h5")):
        with h5py.File(shard) as handle:
            assert handle["waveform"].dtype == np.int16 and handle["waveform"].chunks == (1, 160000)
            names += [n.decode() for n in handle["audio_name"][:]]
            clips.append(handle["waveform"][:] / 32767)
            stored_targets.append(handle["target"][:])
    clips = np.concatenate(clips)
    kept = [0, 1, 4, 5, 6, 7, 8]                                  # rows of panns.h5, then 7 + rows of mp3.hdf
    assert names == [f"Y{ytids[i]}" for i in kept]
    np.testing.assert_array_equal(np.concatenate(stored_targets), targets[kept].astype(np.uint8))

    t = np.arange(160000) / 16000
    for clip, row in zip(clips, kept[:5]):
        _, hz, amplitude, phase = expected["panns_tones"][row]
        if row == 4:                                              # above the 8 kHz Nyquist: soxr's filter removes it
            assert np.sqrt(np.mean(clip ** 2)) < 1e-3 * amplitude
        else:                                                     # soxr's edge transients aside, the tone itself
            reference = amplitude * np.sin(2 * np.pi * hz * t + phase)
            np.testing.assert_allclose(clip[1000:-1000], reference[1000:-1000], rtol=0, atol=1e-4)
    for clip, (samples, hz, amplitude, _) in zip(clips[5:], expected["mp3_tones"].values()):
        length = len(samples) // 2                                 # its samples at 16 kHz
        spectrum = np.abs(np.fft.rfft(clip[:length]))
        seconds = length / 16000                                   # the FFT's bins are 1 / seconds apart
        assert np.fft.rfftfreq(length, 1 / 16000)[spectrum.argmax()] == pytest.approx(round(hz * seconds) / seconds)
        assert np.sqrt(np.mean(clip[1000:length - 1000] ** 2)) == pytest.approx(amplitude / np.sqrt(2), rel=0.02)
    assert np.all(clips[6][48000:] == 0) and np.abs(clips[6][:48000]).max() > 0.19   # 3 s: zero-padded to 10 s

    with open(out / "convert_report.csv") as handle:
        report = [(row["name"], row["shard"], row["reason"].split(":")[0]) for row in csv.DictReader(handle)]
    assert report == [("panns.h5:2", "shard_00000.h5", "placeholder"), (f"Y{ytids[3]}", "shard_00001.h5", "silent"),
                      ("Ycut", "shard_00003.h5", "truncated"), ("Yjunk", "shard_00004.h5", "undecodable"),
                      (f"Y{ytids[0]}", "shard_00004.h5", "duplicate")]


@pytest.mark.slow
def test_parallel_output_equals_serial(converted, tmp_path):
    root = converted[0]
    summary = convert(config(root, out=str(tmp_path / "parallel"), workers=2))
    assert summary == converted[2]
    assert_same(shard_contents(tmp_path / "parallel"), shard_contents(root / "out"))


def test_rerun_resumes_and_redoes_an_interrupted_shard(converted_copy):
    root, _, reference = converted_copy
    out = root / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.h5")}
    assert convert(config(root))["resumed_shards"] == 5
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.h5")} == before

    (out / "shard_00001.h5").unlink()                                         # killed while writing shard 1:
    (out / "shard_00001.h5.tmp").write_bytes(b"\x89HDF\r\n\x1a\n half a shard")   # only its temp file is left
    summary = convert(config(root))
    assert summary["resumed_shards"] == 4 and summary["converted"] == 7
    assert not (out / "shard_00001.h5.tmp").exists()
    assert (out / "shard_00000.h5").stat().st_mtime_ns == before["shard_00000.h5"]
    assert_same(shard_contents(out), reference)


def test_ctrl_c_keeps_finished_shards_and_a_rerun_completes(converted_copy, monkeypatch, capsys):
    root, _, reference = converted_copy
    shutil.rmtree(root / "out")
    read = RowReader.read

    def interrupted_in_shard_2(self, start, stop, names):
        if self.source.path.name == "panns.h5" and start >= 6:
            raise KeyboardInterrupt
        return read(self, start, stop, names)

    monkeypatch.setattr(RowReader, "read", interrupted_in_shard_2)
    args = [str(root / "panns.h5"), str(root / "mp3.hdf"), "--labels", str(root / "labels.csv"),
            "--out", str(root / "out"), "--shard-size", "3", "--workers", "1"]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 130
    assert "interrupted: the finished shards are kept" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "out").iterdir()) == [".lock", "convert_plan.json", "shard_00000.h5",
                                                                "shard_00001.h5"]
    monkeypatch.setattr(RowReader, "read", read)
    main(args)
    assert "converted 7 clips into 5 shards in" in capsys.readouterr().out
    assert convert(config(root))["resumed_shards"] == 5
    assert_same(shard_contents(root / "out"), reference)


def test_a_block_hdf5_cannot_read_is_retried_row_by_row(converted_copy, monkeypatch):
    root, _, reference = converted_copy
    read_rows = RowReader._read_rows

    def row_4_unreadable(self, start, stop, names):
        if self.source.path.name == "panns.h5" and start <= 4 < stop:
            raise OSError("Can't read data (filter returned failure during read)")
        return read_rows(self, start, stop, names)

    monkeypatch.setattr(RowReader, "_read_rows", row_4_unreadable)
    summary = convert(config(root, out="damaged"))
    assert summary["converted"] == 6 and summary["skipped_unreadable"] == 1
    with h5py.File(root / "damaged" / "shard_00001.h5") as handle:
        names = [n.decode() for n in handle["audio_name"][:]]
        reasons = [r.decode() for r in handle["skipped_reason"][:]]
        np.testing.assert_array_equal(handle["waveform"][:], reference["shard_00001.h5"][0]["waveform"][1:])
    assert names == [n.decode() for n in reference["shard_00001.h5"][0]["audio_name"][1:]]
    assert reasons[1] == ("unreadable: HDF5 cannot read it (Can't read data (filter returned failure during read)); "
                          "copy the file again (panns.h5 row 4)")


def test_rerun_with_other_settings_is_refused_or_overwritten(converted_copy):
    root = converted_copy[0]
    with pytest.raises(ValueError, match="out holds shards made from other inputs or settings; use a new --out "
                                         "folder, or --overwrite to replace them"):
        convert(config(root, shard_size=2))
    old = sorted(p.name for p in (root / "out").glob("shard_*.h5"))
    summary = convert(config(root, shard_size=2, overwrite=True))
    assert summary["resumed_shards"] == 0
    assert sorted(p.name for p in (root / "out").glob("shard_*.h5")) == [f"shard_{k:05d}.h5"
                                                                         for k in range(summary["shards"])] != old


@pytest.mark.parametrize("raw, name", [(b"Y--PJHxphWEs.wav", "Y--PJHxphWEs"), (b"00/Y-a_b.mp3", "Y-a_b"),
                                       (b"Yabc.FLAC", "Yabc"), (b"Yabc", "Yabc"), (b"", "")])
def test_clip_names_follow_the_packer(raw, name):
    assert clip_name(raw) == name


def write_panns(path: Path, rows: int = 3, classes: int = 3, **datasets) -> Path:
    """A tiny PANNs-layout file (10 ms rows); `datasets` replace or add datasets (None drops one; `mp3`, a list
    of byte arrays, becomes a variable-length dataset)."""
    contents = {"audio_name": np.array([f"Yclip{i}.wav" for i in range(rows)], dtype="S20"),
                "waveform": np.ones((rows, 320), np.int16), "target": np.ones((rows, classes), bool), **datasets}
    with h5py.File(path, "w") as handle:
        for name, data in contents.items():
            if name == "mp3":
                handle.create_dataset(name, (len(data),), dtype=h5py.vlen_dtype(np.uint8))
                for row, item in enumerate(data):
                    handle[name][row] = item
            elif data is not None:
                handle.create_dataset(name, data=data)
    return path


def bad_sources(root: Path) -> dict:
    """case -> (source, labels file, extra CLI args, what the one-line error must say)."""
    (root / "labels.csv").write_text(LABELS)
    labels = root / "labels.csv"
    (root / "other527.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/m/x{i},C{i}\n" for i in range(527)))
    (root / "text.h5").write_text("YTID,start\n")
    whole = write_panns(root / "whole.h5", rows=40).read_bytes()
    (root / "cut.h5").write_bytes(whole[:len(whole) // 2])
    with h5py.File(root / "index.h5", "w") as handle:
        for name in ("audio_name", "target", "hdf5_path", "index_in_hdf5"):
            handle.create_dataset(name, data=np.zeros(2, np.int32))
    with ShardWriter(root / "shard.h5", ("/m/a",), ("A",), 16000, 16) as writer:
        writer.commit()
    with h5py.File(root / "odd.h5", "w") as handle:
        handle.create_dataset("spectrogram", data=np.zeros((2, 3)))
    packed = np.packbits(np.array([[0, 0, 0, 1, 0]], bool), axis=-1)      # made with 5 classes: column 3 set
    mp3 = root / "pad.hdf"
    write_panns(mp3, rows=1, waveform=None, target=packed, mp3=[np.zeros(4, np.uint8)])
    (root / "folder").mkdir()
    return {
        "not hdf5": ("text.h5", labels, [], "not an HDF5 file"),
        "truncated": ("cut.h5", labels, [], "truncated HDF5 file"),
        "folder": ("folder", labels, [], "is a folder; pass the .h5/.hdf files in it"),
        "missing": ("nothere.h5", labels, [], "no such file"),
        "unknown layout": ("odd.h5", labels, [], "unknown layout (datasets: spectrogram)"),
        "panns index": ("index.h5", labels, [], "is a PANNs index file"),
        "fastsca shard": ("shard.h5", labels, [], "is already a fastsca shard"),
        "forced layout": ("whole.h5", labels, ["--layout", "mp3"], "no mp3 dataset, which the mp3 layout needs"),
        "width": (write_panns(root / "w4.h5", classes=4).name, labels, [],
                  "target holds 4 columns but --labels lists 3 classes"),
        "packed past the list": (mp3.name, labels, [], "row 0 sets target column 3, past the 3 classes of --labels"),
        "soft targets": (write_panns(root / "soft.h5", target=np.full((3, 3), 0.5, np.float32)).name, labels, [],
                         "target is float32 (soft labels?)"),
        "row counts": (write_panns(root / "rows.h5", target=np.ones((2, 3), bool)).name, labels, [],
                       "datasets hold different row counts (waveform 3, target 2, audio_name 3)"),
        "527 other classes": (write_panns(root / "c527.h5", classes=527).name, root / "other527.csv", [],
                              "--labels lists 527 classes but not AudioSet's"),
    }


def test_bad_sources_get_one_line_naming_the_file(tmp_path, capsys):
    for case, (source, labels, extra, message) in bad_sources(tmp_path).items():
        with pytest.raises(SystemExit) as failed:
            main([str(tmp_path / source), "--labels", str(labels), "--out", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert failed.value.code == 2, case
        assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / source}") and message in err, (case, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (AUDIOSET / "class_labels_indices.csv").exists(), reason=f"AudioSet labels not at {AUDIOSET}")
def test_audioset_label_list_and_a_shorter_one(tmp_path):
    """PaSST's (rows, 66) packed target fits AudioSet's 527 classes; a 521-class list also needs 66 bytes, and is
    caught by a row that sets a column past 521."""
    audioset = read_labels(AUDIOSET / "class_labels_indices.csv")
    target = np.zeros((3, 527), bool)
    target[np.arange(3), [0, 137, 524]] = True                   # Speech, Music, and a column past 521
    path = write_panns(tmp_path / "passt.hdf", waveform=None, target=np.packbits(target, axis=-1),
                       mp3=[np.zeros(4, np.uint8)] * 3)
    source = open_source(path, audioset)
    assert (source.layout, source.rows, source.packed_target) == ("mp3", 3, True)
    (tmp_path / "short.csv").write_text("index,mid,display_name\n" + "".join(
        f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(zip(audioset.mids[:521], audioset.names[:521]))))
    with pytest.raises(SourceError, match="row 2 sets target column 524, past the 521 classes"):
        open_source(path, read_labels(tmp_path / "short.csv"))


def test_an_unpacked_mp3_target_is_read_as_it_is(tmp_path):
    (tmp_path / "labels.csv").write_text(LABELS)
    target = np.random.default_rng(341).integers(0, 2, (3, 3)).astype(bool)
    path = write_panns(tmp_path / "unpacked.hdf", waveform=None, target=target, mp3=[np.zeros(4, np.uint8)] * 3)
    source = open_source(path, read_labels(tmp_path / "labels.csv"))
    assert (source.layout, source.packed_target) == ("mp3", False)
    reader = RowReader(source, 3, 16000, 160000)
    rows = reader.read(0, 3, ["Ya", "Yb", "Yc"])
    reader.close()
    np.testing.assert_array_equal(np.stack([row.target for row in rows]), target.astype(np.uint8))
    assert [row.reason.split(":")[0] for row in rows] == ["undecodable"] * 3


def test_int32_pcm_is_scaled_and_nonfinite_or_clipped_rows_are_reported(tmp_path, capsys):
    """Rows: int32 PCM at half scale (stored at half scale, not clipped), float with a NaN and with an inf
    (skipped, as train.pack skips such files), float beyond full scale (stored clipped, and reported)."""
    (tmp_path / "labels.csv").write_text(LABELS)
    rng = np.random.default_rng(7)
    wave = 0.5 * np.sin(2 * np.pi * 100 * np.arange(1600) / 16000)          # 100 ms at 16 kHz: no resampling
    write_panns(tmp_path / "int32.h5", rows=2, waveform=np.stack([(wave * (2 ** 31 - 1)).astype(np.int32)] * 2))
    floats = np.stack([wave, wave, 3 * wave]).astype(np.float32)
    floats[0, rng.integers(1600)], floats[1, rng.integers(1600)] = np.nan, np.inf
    write_panns(tmp_path / "float.h5", rows=3, waveform=floats,
                audio_name=np.array([f"Yfloat{i}.wav" for i in range(3)], dtype="S20"))
    for source in ("int32.h5", "float.h5"):
        with h5py.File(tmp_path / source, "r+") as handle:
            handle.attrs["sample_rate"] = 16000
    out = tmp_path / "out"
    summary = convert(ConvertConfig((tmp_path / "int32.h5", tmp_path / "float.h5"), tmp_path / "labels.csv", out,
                                    workers=1, clip_samples=1600))
    assert summary == {"converted": 3, "shards": 2, "resumed_shards": 0, "skipped": 2, "clipped": 1,
                       "skipped_nonfinite": 2}
    clipped = int(np.count_nonzero(np.abs(3 * wave) > 1))
    printed = capsys.readouterr().out
    assert (f"skipped 2 (2 nonfinite); 1 clipped at full scale, listed in {out / 'convert_report.csv'}") in printed
    with h5py.File(out / "shard_00000.h5") as handle:
        np.testing.assert_allclose(handle["waveform"][0] / 32767, wave, atol=1 / 32767)   # int16 rounding
    with (out / "convert_report.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    assert [row[2].split(" (")[0] for row in rows] == [
        "nonfinite: 1 sample(s) are NaN or infinite, which would make every score NaN"] * 2 + [
        f"clipped: {clipped} sample(s) beyond full scale stored at full scale"]


def test_a_source_that_is_an_output_is_refused(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "out").mkdir()
    source = write_panns(tmp_path / "out" / "shard_00000.h5")             # converting would overwrite it
    before = source.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main([str(source), "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: source {source} is a file this command writes in --out {tmp_path / 'out'}; move it or choose "
        f"another --out\n")
    assert source.read_bytes() == before
