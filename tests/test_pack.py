"""The packer on a small tree of clips in every format, with a corrupt, a missing, a stereo 44.1 kHz and
a 3 s clip; resuming; and the shard reader's errors on a truncated file."""
import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import soundfile

from test_manifest import in_process_pool  # noqa: F401  (a fixture)
from train.pack import PackConfig, main, pack
from train.data.shards import ShardError, ShardIndex

LABELS = 'index,mid,display_name\n0,/m/a,"Alpha"\n1,/m/b,"Beta, b"\n2,/t/c,"Gamma"\n'
# ytid: (file name or None, rate, seconds, channels, tone Hz, labels)
CLIPS = {
    "wav-16k_A": ("Ywav-16k_A.wav", 16000, 10.0, 1, 300, "/m/a"),
    "-flac22k": ("Y-flac22k.flac", 22050, 10.0, 1, 500, "/m/b,/t/c"),
    "ogg32k": ("Yogg32k.ogg", 32000, 10.0, 1, 700, "/t/c"),
    "mp3-44k": ("Ymp3-44k.mp3", 44100, 10.0, 1, 900, "/m/a,/m/b"),
    "stereo44k": ("sub/Ystereo44k.wav", 44100, 12.0, 2, 1100, "/t/c"),
    "short3s": ("Yshort3s.WAV", 16000, 3.0, 1, 1300, "/m/b"),
    "corrupt": ("Ycorrupt.flac", None, 0, 0, 0, "/m/a"),
    "missing": (None, None, 0, 0, 0, "/m/a"),
}


def make_tree(root):
    rng = np.random.default_rng(20261206)
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    originals = {}
    for ytid, (name, rate, seconds, channels, hz, _) in CLIPS.items():
        if name is None:
            continue
        if rate is None:
            (audio / name).write_bytes(b"fLaC" + bytes(rng.integers(0, 256, 3000, np.uint8)))
            continue
        t = np.arange(int(rate * seconds)) / rate
        wave = 0.4 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6))
        wave = np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave
        soundfile.write(audio / name, wave, rate)
        originals[ytid] = wave
    rows = [f'{y}, 0.000, 10.000, "{labels}"' for y, (*_, labels) in CLIPS.items()]
    header = "# Segments csv created today\n# num_ytids=8\n# YTID, start_seconds, end_seconds, positive_labels\n"
    (root / "a.csv").write_text(header + "\n".join(rows[:5]) + "\n")
    (root / "b.csv").write_text(header + "\n".join(rows[5:]) + '\nwav-16k_A, 0.000, 10.000, "/t/c"\n')
    (root / "labels.csv").write_text(LABELS)
    (root / "strong.tsv").write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
                                     "wav-16k_A_0\t0.5\t2.0\t/m/a\nwav-16k_A_0\t1.0\t3.0\t/m/unknown\n"
                                     "stereo44k_0\t2.0\t4.5\t/t/c\n")
    return originals


def config(root, **overrides) -> PackConfig:
    fields = dict(csvs=(root / "a.csv", root / "b.csv"), labels=root / "labels.csv", audio_dir=root / "audio",
                  out=root / "out", shard_size=3, workers=2, strong=(root / "strong.tsv",))
    return PackConfig(**{**fields, **overrides})


def dominant_hz(waveform: np.ndarray) -> float:
    return np.fft.rfftfreq(len(waveform), 1 / 16000)[np.abs(np.fft.rfft(waveform)).argmax()]


@pytest.fixture(scope="module")
def packed_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    originals = make_tree(root)
    return root, originals, pack(config(root))


@pytest.fixture
def packed(packed_once, tmp_path):
    """A private copy of the packed tree, for tests that resume or damage it."""
    root, originals, summary = packed_once
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return tmp_path, originals, summary


@pytest.mark.slow
def test_pack_writes_shards_index_and_report(packed):
    root, originals, summary = packed
    out = root / "out"
    # b.csv lists wav-16k_A again with another label: merged into its first row (one clip, both labels)
    assert summary == {"packed": 6, "shards": 3, "resumed_shards": 0, "skipped": 3, "skipped_merged": 1,
                       "skipped_missing": 1, "skipped_undecodable": 1}
    with open(out / "pack_report.csv") as handle:
        report = list(csv.DictReader(handle))
    assert [(r["clip"], r["shard"], r["reason"].split(":")[0], r["cut"]) for r in report] == [
        ("Ywav-16k_A", "", "merged", ""),
        ("Ywav-16k_A", "shard_00000.h5", "", "whole file"), ("Y-flac22k", "shard_00000.h5", "", "whole file"),
        ("Yogg32k", "shard_00000.h5", "", "whole file"), ("Ymp3-44k", "shard_00001.h5", "", "whole file"),
        ("Ystereo44k", "shard_00001.h5", "", "segment"), ("Yshort3s", "shard_00001.h5", "", "whole file, padded"),
        ("Ycorrupt", "shard_00002.h5", "undecodable", ""), ("Ymissing", "shard_00002.h5", "missing", "")]
    assert "Ycorrupt.flac" in report[7]["reason"]

    index = json.loads((out / "index.json").read_text())
    assert [s["clips"] for s in index["shards"]] == [3, 3, 0] and index["num_clips"] == 6
    assert index["label_names"] == ["Alpha", "Beta, b", "Gamma"]
    split = ShardIndex.open(out)
    assert split.num_clips == 6 and split.counts == (3, 3, 0) and split.label_mids == ("/m/a", "/m/b", "/t/c")

    names, waveforms, targets = [], [], []
    for shard in sorted(out.glob("shard_*.h5")):
        with h5py.File(shard) as handle:
            assert handle.attrs["sample_rate"] == 16000 and handle.attrs["clip_samples"] == 160000
            assert handle["waveform"].dtype == np.int16 and handle["waveform"].chunks == (1, 160000)
            names += [n.decode() for n in handle["audio_name"][:]]
            waveforms.append(handle["waveform"][:])
            targets.append(handle["target"][:])
    waveforms, targets = np.concatenate(waveforms) / 32767, np.concatenate(targets)
    assert names == ["Ywav-16k_A", "Y-flac22k", "Yogg32k", "Ymp3-44k", "Ystereo44k", "Yshort3s"]
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    assert waveforms.shape == (6, 160000)
    np.testing.assert_allclose(waveforms[0], originals["wav-16k_A"], atol=2e-4)        # 16 kHz wav: as is
    for row, ytid in enumerate(names):
        assert dominant_hz(waveforms[row]) == pytest.approx(CLIPS[ytid[1:]][4], abs=1.0)
    stereo_rms = np.sqrt(np.mean(waveforms[4][1000:-1000] ** 2))
    assert stereo_rms == pytest.approx(0.75 * 0.4 / np.sqrt(2), rel=0.01)              # mean of L and L/2
    assert np.all(waveforms[5][48000:] == 0) and np.abs(waveforms[5][:48000]).max() > 0.35   # 3 s, zero-padded


def test_strong_labels_are_stored_per_shard(packed):
    out = packed[0] / "out"
    with h5py.File(out / "shard_00000.h5") as handle:
        assert handle.attrs["has_strong"]
        assert handle["strong_clip"][:].tolist() == [0] and handle["strong_label"][:].tolist() == [0]
        assert handle["strong_onset"][:].tolist() == [0.5] and handle["strong_offset"][:].tolist() == [2.0]
    with h5py.File(out / "shard_00001.h5") as handle:
        assert handle["strong_clip"][:].tolist() == [1] and handle["strong_label"][:].tolist() == [2]


@pytest.mark.slow
def test_rerun_resumes_and_redoes_an_interrupted_shard(packed):
    root = packed[0]
    out = root / "out"
    shards = sorted(out.glob("shard_*.h5"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    summary = pack(config(root, workers=1))
    assert summary["resumed_shards"] == 3 and summary["skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in shards} == {n: m for n, (m, _) in before.items()}

    (out / "shard_00001.h5").unlink()                                       # killed while writing shard 1:
    (out / "shard_00001.h5.tmp").write_bytes(b"\x89HDF\r\n\x1a\n half a shard")   # only its temp file is left
    summary = pack(config(root, workers=1))
    assert summary["resumed_shards"] == 2 and summary["packed"] == 6
    assert not (out / "shard_00001.h5.tmp").exists()
    assert (out / "shard_00000.h5").stat().st_mtime_ns == before["shard_00000.h5"][0]
    with h5py.File(out / "shard_00001.h5") as handle:
        assert [n.decode() for n in handle["audio_name"][:]] == ["Ymp3-44k", "Ystereo44k", "Yshort3s"]
    assert len((out / "pack_report.csv").read_text().splitlines()) == 10


REFUSED = "out holds shards made from other inputs or settings; use a new --out folder, or --overwrite to replace them"


def test_rerun_with_other_inputs_is_refused(packed):
    root = packed[0]
    with pytest.raises(ValueError, match=REFUSED):
        pack(config(root, shard_size=2))
    # another --audio-dir: the same names, one recording changed (same size): its old shards are not kept
    shutil.copytree(root / "audio", root / "other", copy_function=shutil.copy2)
    wave = 0.3 * np.sin(2 * np.pi * 777 * np.arange(10 * 16000) / 16000)
    soundfile.write(root / "other" / "Ywav-16k_A.wav", wave, 16000)
    with pytest.raises(ValueError, match=REFUSED):
        pack(config(root, audio_dir=root / "other"))
    summary = pack(config(root, audio_dir=root / "other", overwrite=True))
    assert summary["resumed_shards"] == 0 and summary["packed"] == 6
    with h5py.File(root / "out" / "shard_00000.h5") as handle:
        assert dominant_hz(handle["waveform"][0] / 32767) == pytest.approx(777, abs=1.0)


def test_a_moved_tree_resumes(packed):
    """The same files under another --audio-dir (moved with their times) are the same inputs."""
    root = packed[0]
    (root / "audio").rename(root / "moved")
    assert pack(config(root, audio_dir=root / "moved"))["resumed_shards"] == 3


def test_truncated_shard_gives_a_clear_error(packed):
    shard = packed[0] / "out" / "shard_00001.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"shard_00001\.h5: not a readable HDF5 shard .*truncated.*train\.pack"):
        ShardIndex.open(packed[0] / "out")
    with pytest.raises(ShardError, match=r"shard_00001\.h5: not a readable HDF5 shard"):
        ShardIndex.open(shard)
    with pytest.raises(ShardError, match="no index.json"):
        ShardIndex.open(packed[0] / "audio")


@pytest.mark.slow
def test_command_line(tmp_path, capsys):
    make_tree(tmp_path)
    args = ["--csv", str(tmp_path / "a.csv"), "--labels", str(tmp_path / "labels.csv"),
            "--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "cli"), "--workers", "1"]
    main(args)
    assert "packed 5 clips into 1 shards" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("x, 0, 10, /m/a, /m/b\n")
    with pytest.raises(SystemExit) as stopped:
        main(args[:1] + [str(tmp_path / "bad.csv")] + args[2:])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'bad.csv'}:1: expected 4 fields")


def test_segment_times_are_honoured_when_the_file_is_the_whole_recording(tmp_path, in_process_pool):
    """A 60 s recording with the row 30-40 s stores seconds 30-40 (it stored 0-10), a 10 s download of that segment
    is stored whole, and a segment past the end of a longer file is skipped, each said in pack_report.csv."""
    rng = np.random.default_rng(20261206)
    hz = rng.choice(np.arange(10, 70) * 50, 6, replace=False)
    t = np.arange(10 * 16000) / 16000
    blocks = [0.3 * np.sin(2 * np.pi * f * t) for f in hz]
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "Ywhole.flac", np.concatenate(blocks), 16000)        # 60 s recording
    soundfile.write(tmp_path / "audio" / "Ycut.wav", blocks[3], 16000)                          # 10 s download
    soundfile.write(tmp_path / "audio" / "Yshort.wav", np.concatenate(blocks[:2]), 16000)       # 20 s, row 30-40
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "a.csv").write_text('whole, 30.000, 40.000, "/m/a"\ncut, 30.000, 40.000, "/m/b"\n'
                                    'short, 30.000, 40.000, "/m/a"\n')
    summary = pack(PackConfig((tmp_path / "a.csv",), tmp_path / "labels.csv", tmp_path / "audio", tmp_path / "out",
                              workers=1))
    assert summary["packed"] == 2 and summary["skipped_outside"] == 1
    split = ShardIndex.open(tmp_path / "out")
    np.testing.assert_allclose(split.read(0)[0] / 32767, blocks[3], atol=2 / 32767)   # two 16-bit roundings
    np.testing.assert_allclose(split.read(1)[0] / 32767, blocks[3], atol=2 / 32767)   # two 16-bit roundings
    with open(tmp_path / "out" / "pack_report.csv") as handle:
        rows = [(r["clip"], r["reason"][:60], r["cut"]) for r in csv.DictReader(handle)]
    assert rows == [("Ywhole", "", "segment"), ("Ycut", "", "whole file"),
                    ("Yshort", f"outside: {tmp_path / 'audio' / 'Yshort.wav'}: segment 30-40 s lies"[:60], "")]
