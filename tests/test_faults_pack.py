"""The packer against odd input, as users bring it: odd audio (antiphase channels, empty and 1-sample files, DC,
clipping, near-silence, 6 channels, 8/24-bit, float and u-law WAVs, a wrong extension), CSVs in other encodings
or compressed, every numeric option at 0, negative, NaN, inf and huge, paths in several spellings, Ctrl-C at
start-up and mid-shard, and a disk that fills up (a real HDF5 write failure, by RLIMIT_FSIZE). Each case is
handled or ends in one line; a bad file is skipped and reported, and finished shards are kept."""
import bz2
import codecs
import csv
import gzip
import lzma
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_manifest import in_process_pool, write_tone  # noqa: F401  (a fixture)
from train import pack as pack_module
from train.data.manifest import AudioFiles, read_manifest
from train.pack import _decode, main
from train.data.shards import ShardIndex, ShardWriter

RATE = 16000


def decode_one(path: Path, clip_samples: int = RATE) -> tuple[str, np.ndarray | None, str]:
    """The worker's result for one file: (name, int16 clip or None, cut or skip reason)."""
    (result,) = _decode([("clip", str(path), None, None, "")], RATE, clip_samples, "cut")[0]
    return result


def signal_of(seconds: float, rng) -> np.ndarray:
    return 0.4 * np.sin(2 * np.pi * rng.uniform(200, 2000) * np.arange(round(seconds * RATE)) / RATE)


ODD_AUDIO = {
    # name: (samples (N,) or (N, C), subtype, expected stored float waveform or skip-reason prefix, tolerance)
    "antiphase": lambda w: (np.stack([w, -w], axis=1), "PCM_16", w, 1 / 32767 + 1e-4),
    "dc-offset": lambda w: (0.5 * w + 0.3, "PCM_16", 0.5 * w + 0.3, 1 / 32767 + 1e-4),
    "clipping": lambda w: (3 * w, "FLOAT", np.clip(3 * w, -1, 1), 1 / 32767),
    "quiet": lambda w: (1e-6 * w, "FLOAT", "silent:", None),
    "six-channel": lambda w: (np.stack([w * (c + 1) / 6 for c in range(6)], axis=1), "FLOAT", w * 3.5 / 6, 1 / 32767),
    "8-bit": lambda w: (w, "PCM_U8", w, 1 / 128 + 1e-4),
    "24-bit": lambda w: (w, "PCM_24", w, 1 / 32767),
    "float": lambda w: (w, "FLOAT", w, 1 / 32767),
    "u-law": lambda w: (w, "ULAW", w, 0.4 / 32 + 1e-3),
}


@pytest.mark.parametrize("case", sorted(ODD_AUDIO))
def test_odd_audio_is_packed_faithfully_or_skipped_with_a_reason(tmp_path, case):
    rng = np.random.default_rng(58)
    data, subtype, expected, atol = ODD_AUDIO[case](signal_of(0.5, rng))
    path = tmp_path / f"{case}.wav"
    soundfile.write(path, data, RATE, subtype=subtype)
    name, stored, how = decode_one(path)
    if isinstance(expected, str):
        assert stored is None and how.startswith(expected) and str(path) in how
        return
    beyond = int(np.count_nonzero(np.abs(data) > 1))          # only the clipping case holds any: reported
    assert bool(beyond) == (case == "clipping")
    clipped = f", clipped: {beyond} sample(s) beyond full scale stored at full scale" if beyond else ""
    assert how == "whole file, padded" + clipped and stored.shape == (RATE,)
    np.testing.assert_allclose(stored[:len(expected)] / 32767, expected, atol=atol)
    assert not stored[len(expected):].any()


@pytest.mark.parametrize("samples, expected", [(0, "undecodable:"), (1, "whole file, padded")])
def test_empty_and_one_sample_files(tmp_path, samples, expected):
    path = tmp_path / "tiny.wav"
    value = np.random.default_rng(78).uniform(0.2, 0.9)
    soundfile.write(path, np.full(samples, value), RATE, subtype="FLOAT")
    name, stored, how = decode_one(path)
    assert how.startswith(expected)
    if samples:
        assert stored[0] == round(value * 32767) and not stored[1:].any()
    else:
        assert stored is None and "holds no samples" in how


def test_a_wrong_extension_is_read_by_content(tmp_path):
    wave = signal_of(0.3, np.random.default_rng(86))
    path = tmp_path / "really-flac.wav"
    soundfile.write(path, wave, RATE, format="FLAC")
    name, stored, how = decode_one(path)
    np.testing.assert_allclose(stored[:len(wave)] / 32767, wave, atol=1 / 32767 + 1e-4)


ENCODINGS = {
    "utf-8-bom": lambda text: codecs.BOM_UTF8 + text.encode(),
    "utf-16": lambda text: text.encode("utf-16"),
    "gzip": lambda text: gzip.compress(text.encode()),
    "bzip2": lambda text: bz2.compress(text.encode()),
    "xz": lambda text: lzma.compress(text.encode()),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_manifests_in_other_encodings_read_the_same(tmp_path, encoding):
    text = "filename,label,fold,recording\nc\u00e9llo.wav,str\u00efngs,2,r1\r\nb.wav,\"a,b\",1,r2\n"
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "odd.csv").write_bytes(ENCODINGS[encoding](text))
    files = AudioFiles(tmp_path)
    expected = read_manifest(tmp_path / "plain.csv", files)
    assert read_manifest(tmp_path / "odd.csv", files) == expected
    assert [(i.name, i.labels) for i in expected[0]] == [("c\u00e9llo.wav", ("str\u00efngs",)), ("b.wav", ("a", "b"))]


def one_line_exit(capsys, args: list[str]) -> tuple[object, str]:
    """(exit code, the one line: the exit message, or stderr's beside the progress bars) of the pack command."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    lines = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip() and not re.search(r"\d+%\|", line)]
    message = "\n".join(lines)
    assert "Traceback" not in err and "\n" not in message, err
    return stopped.value.code, message


@pytest.fixture
def folder_args(tmp_path):
    write_tone(tmp_path / "audio" / "dog" / "a.wav", 0.2, 500)
    return ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("option, value, words", [
    *[("--workers", v, "--workers") for v in ("0", "-1", "nan", "inf", "1000000000")],
    *[("--shard-size", v, "--shard-size") for v in ("0", "-1", "nan", "inf")],
    *[("--clip-seconds", v, "--clip-seconds") for v in ("0", "-1", "nan", "inf", "1e12")],
])
def test_bad_numbers_are_one_line(capsys, folder_args, option, value, words):
    code, message = one_line_exit(capsys, folder_args + [option, value])
    assert message.startswith("error: ") and words in message and code == 2
    assert not (Path(folder_args[3]) / "index.json").exists()


def test_a_huge_shard_size_packs_one_shard(capsys, folder_args, in_process_pool):
    main(folder_args + ["--shard-size", str(10 ** 12), "--workers", "1", "--clip-seconds", "0.5"])
    assert "packed 1 clips into 1 shards" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["trailing-slash", "tilde", "relative", "symlink", "spaces-unicode"])
def test_paths_in_every_spelling(tmp_path, monkeypatch, capsys, in_process_pool, spelling):
    base = tmp_path / ("my d\u00e4ta \u97f3" if spelling == "spaces-unicode" else "data")
    write_tone(base / "audio" / "b\u00e9ll ring" / "one shot.wav", 0.2, 900)
    write_tone(base / "audio" / "dog" / "a.wav", 0.2, 500)
    audio, out = str(base / "audio"), str(base / "out")
    if spelling == "trailing-slash":
        audio, out = audio + "/", out + "/"
    elif spelling == "tilde":
        monkeypatch.setenv("HOME", str(base))
        audio, out = "~/audio", "~/out"
    elif spelling == "relative":
        monkeypatch.chdir(base)
        audio, out = "audio", "out"
    elif spelling == "symlink":
        (tmp_path / "linked").symlink_to(base / "audio", target_is_directory=True)
        (base / "audio" / "dog" / "more").symlink_to(base / "audio" / "b\u00e9ll ring", target_is_directory=True)
        audio = str(tmp_path / "linked")
    main(["--audio-dir", audio, "--out", out, "--workers", "1", "--clip-seconds", "0.3"])
    # a folder of dog/ linked to another class's folder: its files are not packed as dog's, and that is reported
    skipped = "skipped 1 (1 linked)" if spelling == "symlink" else "skipped 0"
    assert (f"packed 2 clips into 1 shards in {Path(os.path.expanduser(out))} (0 already done); {skipped}"
            in capsys.readouterr().out)
    assert ShardIndex.open(base / "out").label_names == ("b\u00e9ll ring", "dog")


def test_ctrl_c_at_start_up_is_one_line(capsys, folder_args, monkeypatch):
    def interrupted(*_):
        raise KeyboardInterrupt
    monkeypatch.setattr(pack_module, "read_folder", interrupted)
    code, message = one_line_exit(capsys, folder_args)
    assert code == 130 and message == f"interrupted: finished shards in {folder_args[3]} are kept; run the same " \
                                      f"command again to resume"


def many_files(tmp_path: Path, count: int) -> list[str]:
    rng = np.random.default_rng(182)
    for k in range(count):
        soundfile.write(tmp_path / "audio" / "hum" / f"{k}.wav" if (tmp_path / "audio" / "hum").mkdir(
            parents=True, exist_ok=True) is None else "", signal_of(0.1, rng), RATE)
    return ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"), "--shard-size", "2",
            "--workers", "1", "--clip-seconds", "0.1"]


def test_ctrl_c_during_a_shard_keeps_finished_shards_and_resumes(tmp_path, capsys, monkeypatch, in_process_pool):
    args = many_files(tmp_path, 5)
    add, calls = ShardWriter.add, []

    def add_then_interrupt(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:       # the second clip of the second shard
            raise KeyboardInterrupt
        return add(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "add", add_then_interrupt)
    code, message = one_line_exit(capsys, args)
    assert code == 130 and message.startswith("interrupted: finished shards")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock", "pack_plan.json", "shard_00000.h5"]
    monkeypatch.setattr(ShardWriter, "add", add)
    main(args)
    assert f"packed 5 clips into 3 shards in {tmp_path / 'out'} (1 already done)" in capsys.readouterr().out
    assert ShardIndex.open(tmp_path / "out").counts == (2, 2, 1)


def test_a_full_disk_mid_shard_is_one_line_keeps_finished_shards_and_resumes(tmp_path, capsys, in_process_pool):
    """HDF5's close after a failed write used to crash at exit (exit 139, no message, the .tmp left behind)."""
    args = many_files(tmp_path, 6)
    args[args.index("--shard-size") + 1] = "3"
    args[args.index("--clip-seconds") + 1] = "5"         # 3 clips of 160 kB: a shard passes 400 kB
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG), no signal
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, limit[1]))
        code, message = one_line_exit(capsys, args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    assert code == 2 and message == f"error: cannot write into {tmp_path / 'out'}: {os.strerror(27)}; check the " \
                                    f"path and the disk, or choose another --out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock", "pack_plan.json"]
    main(args)
    assert ShardIndex.open(tmp_path / "out").counts == (3, 3)


@pytest.mark.slow
def test_a_real_ctrl_c_mid_pack_is_one_line_and_the_same_command_resumes(tmp_path, in_process_pool):
    """SIGINT to the command as a terminal sends it (workers ignore it; the packer stops them)."""
    source = tmp_path / "source.flac"
    soundfile.write(source, signal_of(2.0, np.random.default_rng(231)), 44100)
    (tmp_path / "audio" / "hum").mkdir(parents=True)
    # ~10 s of decoding, so the signal comes mid-way; hard links, as symlinks to one file are one clip
    for k in range(2000):
        os.link(source, tmp_path / "audio" / "hum" / f"{k:03d}.flac")
    args = ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"), "--shard-size", "25",
            "--workers", "1", "--clip-seconds", "2"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "train.pack", *args], stdout=subprocess.DEVNULL,
                                   stderr=stderr, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"packing:.*\| *([3-9]\d|\d{3,})/2000", log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, log.read_text()[-300:]
    finally:
        process.kill()
    lines = [line for line in re.split(r"[\r\n]", log.read_text()) if line.strip() and not re.search(r"\d+%\|", line)]
    assert lines == [f"interrupted: finished shards in {tmp_path / 'out'} are kept; run the same command again "
                     f"to resume"]
    kept = sorted(p.name for p in (tmp_path / "out").glob("shard_*"))
    assert kept and kept == [f"shard_{i:05d}.h5" for i in range(len(kept))] and len(kept) < 80
    main(args)
    assert ShardIndex.open(tmp_path / "out").num_clips == 2000


def test_no_row_matching_the_label_list_is_one_line_after_the_report(tmp_path, capsys, in_process_pool):
    write_tone(tmp_path / "audio" / "dog" / "a.wav", 0.2, 500)
    (tmp_path / "classes.txt").write_text("cat\n")
    code, message = one_line_exit(capsys, ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                                           "--labels", str(tmp_path / "classes.txt"), "--workers", "1"])
    assert code == 2 and message == f"error: no clip of the 1 files could be packed (see pack_report.csv in " \
                                    f"{tmp_path / 'out'}); check that --audio-dir {tmp_path / 'audio'} holds the " \
                                    f"audio files"
    rows = list(csv.reader(open(tmp_path / "out" / "pack_report.csv")))
    assert rows[1] == ["dog/a.wav", "", f"label: 'dog' is not in --labels {tmp_path / 'classes.txt'}", ""]
