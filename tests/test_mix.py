"""train.mix on tiny generated clips (tones of three classes with quiet edges, noise backgrounds shorter than
a soundscape): the same seed gives the same files, no recording is in two splits, the strong labels are where
the events were mixed, train.pack packs the output and train.run trains on it, bad sources are skipped and
reported, bad options are one line. One test mixes the shared UrbanSound8K clips where they are present."""
import csv
import json
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile

import train.run
from train.config import DataConfig
from train.data.shards import ShardIndex
from train import mix, pack
from train.data.soundscapes import BACKGROUND_RMS, Event, MixConfig, Plan, loop_to, render, trim_quiet

SEED = 20261206
RATE = 16000
FRAME = 160   # 10 ms: train/data/soundscapes.py's trim frame
TONES = {"high": 3000.0, "low": 500.0, "mid": 1500.0}   # class -> tone Hz
REAL_AUDIO = Path(__file__).parents[2] / "shared" / "real-audio"


def make_clips(root: Path, background_recordings: int = 6) -> Path:
    """Event clips (4 recordings x 2 clips per class: 50 ms of silence, a tone of 15-30 frames, 50 ms of
    silence) and noise backgrounds (0.37 s, shorter than a soundscape) in root/clips; the manifest's path."""
    rng = np.random.default_rng(SEED)
    (root / "clips").mkdir(parents=True)
    rows = ["filename,label,recording"]
    for label, hz in TONES.items():
        for recording in range(4):
            for take in range(2):
                tone = 0.5 * np.sin(2 * np.pi * hz * np.arange(int(rng.integers(15, 31)) * FRAME) / RATE
                                    + rng.uniform(0, 6))
                name = f"{label}-{recording}-{take}.wav"
                soundfile.write(root / "clips" / name, np.concatenate([np.zeros(5 * FRAME), tone, np.zeros(5 * FRAME)]),
                                RATE)
                rows.append(f"{name},{label},{label}{recording}")
    for recording in range(background_recordings):
        soundfile.write(root / "clips" / f"hum-{recording}.wav", 0.1 * rng.standard_normal(int(0.37 * RATE)), RATE)
        rows.append(f"hum-{recording}.wav,hum,hum{recording}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return root / "clips.csv"


def mix_args(root: Path, out: str = "out", *extra: str) -> list[str]:
    return ["--manifest", str(root / "clips.csv"), "--audio-dir", str(root / "clips"), "--background-classes", "hum",
            "--out", str(root / out), "--soundscapes", "20", "--clip-seconds", "1", "--split-fractions", "0.6,0.2,0.2",
            "--seed", "3", *extra]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    make_clips(root)
    mix.main(mix_args(root))
    return root


def rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    return [r for r in csv.reader(path.read_text().splitlines(), delimiter=delimiter) if r and not r[0].startswith("#")]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_the_same_seed_gives_the_same_files_and_another_seed_other_soundscapes(mixed, tmp_path):
    mix.main(mix_args(mixed, str(tmp_path / "again")))
    mix.main(mix_args(mixed, str(tmp_path / "other"), "--seed", "4"))
    first, again, other = tree(mixed / "out"), tree(tmp_path / "again"), tree(tmp_path / "other")
    assert len([name for name in first if name.endswith(".wav")]) == 20
    assert again == first
    wavs = [name for name in first if name.endswith(".wav")]
    assert sum(other.get(name) != first[name] for name in wavs) == len(wavs)


def test_no_recording_is_in_two_splits(mixed):
    report = json.loads((mixed / "out" / "mix_report.json").read_text())
    assert {name: split["soundscapes"] for name, split in report["splits"].items()} == {
        "train": 12, "validation": 4, "test": 4}
    # each clip's recording as the manifest gives it (not as train.mix wrote it)
    recording = {row[0]: row[2] for row in rows(mixed / "clips.csv")[1:]}
    used = {split: {(row[1], recording[row[3]]) for row in rows(mixed / "out" / split / "sources.csv")[1:]}
            for split in report["splits"]}
    for split, recordings in used.items():
        assert {role for role, _ in recordings} == {"background", "event"}
        for other in used:
            if other != split:
                assert not {rec for _, rec in recordings} & {rec for _, rec in used[other]}, (split, other)
    # every recording named is one of the manifest's, and backgrounds are only the background class's
    assert all(rec.startswith("hum") == (role == "background") for split in used.values() for role, rec in split)


def rms(waveform: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))


def tone_frames(waveform: np.ndarray, hz: float) -> np.ndarray:
    """Per 10 ms frame, the amplitude of the tone at `hz` in it (a one-bin DFT)."""
    frames = waveform[:len(waveform) // FRAME * FRAME].reshape(-1, FRAME)
    phase = np.exp(-2j * np.pi * hz * np.arange(FRAME) / RATE)
    return 2 * np.abs(frames @ phase) / FRAME


def test_strong_labels_are_where_the_events_were_mixed(tmp_path):
    make_clips(tmp_path)
    mix.main(mix_args(tmp_path, "out", "--events", "1,1", "--snr", "25,30"))
    checked = 0
    for split in ("train", "validation", "test"):
        labels = {row[0]: row[3] for row in rows(tmp_path / "out" / split / "segments.csv")}
        sources = [row for row in rows(tmp_path / "out" / split / "sources.csv")[1:] if row[1] == "event"]
        strong = rows(tmp_path / "out" / split / "strong.tsv", "\t")[1:]
        assert len(sources) == len(strong)
        for (clip, onset, offset, label), source in zip(strong, sources):
            ytid = clip.removesuffix("_0")
            assert labels[ytid] == label and source[0] == clip and source[2] == label
            waveform = soundfile.read(tmp_path / "out" / split / "audio" / f"Y{ytid}.wav")[0]
            spectrum = np.abs(np.fft.rfft(waveform[int(float(onset) * RATE):int(float(offset) * RATE)]))
            peak_hz = np.argmax(spectrum) * RATE / (2 * (len(spectrum) - 1))
            # the loudest frequency in the labelled span is the label's tone: bins are 1/span (>= 1/0.3 s) apart
            assert abs(peak_hz - TONES[label]) <= RATE / (int(float(offset) * RATE) - int(float(onset) * RATE)), clip
            amplitude = tone_frames(waveform, TONES[label])
            found = np.flatnonzero(amplitude > amplitude.max() / 2)
            # the frames holding the tone start and end where the label says: a frame only half covered by the tone
            # can fall under the threshold, so up to two frames (20 ms) apart
            assert abs(found[0] * FRAME / RATE - float(onset)) <= 2 * FRAME / RATE, clip
            assert abs((found[-1] + 1) * FRAME / RATE - float(offset)) <= 2 * FRAME / RATE, clip
            # the quiet edges of the source clip (5 frames each side) were cut: the label spans its tone only, to
            # the sample (times are written to 1e-6 s, 0.016 samples, so rounding to samples recovers them)
            tone = soundfile.info(str(tmp_path / "clips" / source[3])).frames - 10 * FRAME
            assert round(float(offset) * RATE) - round(float(onset) * RATE) == tone, clip
            checked += 1
    assert checked == 20


def pack_commands(out: Path) -> list[list[str]]:
    report = json.loads((out / "mix_report.json").read_text())
    return mix.follow_up(out, report)


def pack_into(command: list[str], folder: Path) -> None:
    """Run a printed train.pack command in this process, into folder/<its split> with one worker."""
    at = command.index("--out")
    pack.main([*command[3:at], "--out", str(folder / Path(command[at + 1]).name), *command[at + 2:], "--workers", "1"])


def test_train_pack_packs_the_output_with_its_strong_labels(mixed, tmp_path):
    *packs, run = pack_commands(mixed / "out")
    assert [c[:3] for c in packs] == [["python", "-m", "train.pack"]] * 3 and run[:3] == ["python", "-m", "train.run"]
    assert all(command[-2:] == ["--clip-seconds", "1"] for command in packs)
    for command in packs:
        pack_into(command, tmp_path)
    for split in ("train", "validation", "test"):
        expected = {}
        for clip, onset, offset, label in rows(mixed / "out" / split / "strong.tsv", "\t")[1:]:
            expected.setdefault(f"Y{clip.removesuffix('_0')}", []).append((float(onset), float(offset), label))
        with h5py.File(tmp_path / split / "shard_00000.h5", "r") as handle:
            names = handle["audio_name"].asstr()[:]
            labels = [str(n) for n in handle.attrs["label_names"]]
            assert labels == sorted(TONES) and bool(handle.attrs["has_strong"])
            stored = {}
            for row, onset, offset, label in zip(handle["strong_clip"][:], handle["strong_onset"][:],
                                                 handle["strong_offset"][:], handle["strong_label"][:]):
                stored.setdefault(names[row], []).append((float(onset), float(offset), labels[label]))
        assert set(stored) == set(expected) and len(names) == len(expected)
        for clip, events in expected.items():
            # train.pack merges overlapping events of one class (fastsca.events.clean_events): compare per class
            for label in {e[2] for e in events}:
                ours = sorted((on, off) for on, off, lab in events if lab == label)
                theirs = sorted((on, off) for on, off, lab in stored[clip] if lab == label)
                assert theirs[0][0] == pytest.approx(ours[0][0], abs=1e-6)   # stored as float32 seconds
                assert theirs[-1][1] == pytest.approx(max(off for _, off in ours), abs=1e-6)


def test_train_run_trains_on_the_packed_soundscapes(mixed, tmp_path):
    for command in pack_commands(mixed / "out")[:-1]:
        pack_into(command, tmp_path)
    out = tmp_path / "run"
    train.run.main(["--data", str(tmp_path / "train"), "--eval-data", str(tmp_path / "test"), "--profile", "cpu",
                    "--channels", "8,16,32,64,64,128,128", "--batch-size", "4", "--steps", "2", "--eval-every", "2",
                    "--warmup-steps", "1", "--num-workers", "0", "--out", str(out)])
    latest = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert latest["kind"] == "test" and latest["clips"] == 4
    assert (out / "best.pt").is_file()


def test_train_run_validates_on_the_mixed_validation_split(mixed, tmp_path, capsys):
    """--validation-data: all of --data trains, the mix's own validation split (other recordings) validates."""
    for command in pack_commands(mixed / "out")[:-1]:
        pack_into(command, tmp_path)
    out = tmp_path / "run"
    train.run.main(["--data", str(tmp_path / "train"), "--eval-data", str(tmp_path / "test"), "--validation-data",
                    str(tmp_path / "validation"), "--profile", "cpu", "--channels", "8,16,32,64,64,128,128",
                    "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--warmup-steps", "1",
                    "--num-workers", "0", "--out", str(out)])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation_clips = ShardIndex.open(str(tmp_path / "validation")).num_clips
    assert [line["clips"] for line in lines if line["kind"] == "val"] == [validation_clips]
    train_clips = ShardIndex.open(str(tmp_path / "train")).num_clips
    assert (f"({train_clips} training clips), validation {tmp_path / 'validation'} ({validation_clips} clips)"
            in capsys.readouterr().out)
    with pytest.raises(ValueError, match="--validation-data replaces the validation clips"):
        DataConfig(validation_path=str(tmp_path / "validation"))


def test_missing_undecodable_repeated_and_multi_label_clips_are_skipped_and_reported(tmp_path, capsys):
    manifest = make_clips(tmp_path)
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF" + bytes(range(200)))
    manifest.write_text(manifest.read_text() + "gone.wav,low,low9\nbroken.wav,mid,mid9\nlow-0-0.wav,low,low0\n"
                        "./low-1-0.wav,high,low1\n")
    mix.main(mix_args(tmp_path))
    report = json.loads((tmp_path / "out" / "mix_report.json").read_text())
    assert sorted((s["clip"], s["reason"].split(":")[0]) for s in report["skipped"]) == [
        ("broken.wav", "undecodable"), ("gone.wav", "missing"), ("low-0-0.wav", "duplicate"),
        ("low-1-0.wav", "label"), ("low-1-0.wav", "merged")]
    assert sum(split["soundscapes"] for split in report["splits"].values()) == 20
    assert "skipped 5 source clips (1 duplicate, 1 label, 1 merged, 1 missing, 1 undecodable)" in \
        capsys.readouterr().out


def one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        mix.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]   # not the progress bars
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("extra, expected", [
    (["--background-classes", ""], "no backgrounds: give --background-classes"),
    (["--background-classes", "hum,rain"], "--background-classes rain: no such class"),
    (["--background-classes", "hum,low,mid,high"], "no event clips"),
    (["--split-fractions", "0.5,0.5,0.5"], "--split-fractions 0.5,0.5,0.5: give three shares"),
    (["--split-fractions", "0.5,x,0.5"], "argument --split-fractions"),
    (["--events", "0,2"], "--events 0,2: give MIN,MAX with 1 <= MIN <= MAX"),
    (["--snr", "9,3"], "--snr 9,3: give LOW,HIGH"),
    (["--clip-seconds", "1.03"], "--clip-seconds 1.03: train.run could not train"),
    (["--soundscapes", "0"], "--soundscapes 0: give 1 or more"),
    (["--sample-rate", "0"], "--sample-rate 0: give 8000 to 384000 Hz"),
    (["--seed", "-1"], "--seed -1: give 0 or more"),
    (["--trim-db", "nan"], "--trim-db nan: give 0 (no trim) or more dB"),
    (["--audio-dir", "/nonexistent/clips"], "--audio-dir /nonexistent/clips: no such folder"),
    (["--manifest", "/nonexistent/clips.csv"], "/nonexistent/clips.csv"),
    (["--backgrounds", "/nonexistent/hum"], "--backgrounds /nonexistent/hum: no such folder"),
])
def test_bad_options_are_one_line(tmp_path, capsys, extra, expected):
    make_clips(tmp_path)
    assert expected in one_line_error(mix_args(tmp_path) + extra, capsys)
    assert not (tmp_path / "out" / "train").exists()


def test_the_printed_commands_survive_a_path_with_spaces(tmp_path, capsys):
    make_clips(tmp_path)
    mix.main(mix_args(tmp_path, "my mix"))
    printed = capsys.readouterr().out.split("pack and train with:\n")[1].splitlines()
    commands = mix.follow_up(tmp_path / "my mix", json.loads((tmp_path / "my mix" / "mix_report.json").read_text()))
    assert [shlex.split(line) for line in printed] == commands and len(commands) == 4


def test_a_folder_of_backgrounds_serves_every_class_as_events(tmp_path):
    make_clips(tmp_path, background_recordings=0)
    rng = np.random.default_rng(SEED)
    (tmp_path / "bg" / "street").mkdir(parents=True)
    for k in range(5):
        soundfile.write(tmp_path / "bg" / "street" / f"take {k}.flac", 0.1 * rng.standard_normal(2 * RATE + k), RATE)
    mix.main(mix_args(tmp_path, "out", "--background-classes", "", "--backgrounds", str(tmp_path / "bg")))
    report = json.loads((tmp_path / "out" / "mix_report.json").read_text())
    assert report["classes"] == sorted(TONES)
    used = {split: {row[4] for row in rows(tmp_path / "out" / split / "sources.csv")[1:] if row[1] == "background"}
            for split in report["splits"]}
    assert all(used.values()) and set().union(*used.values()) <= {f"background:take {k}" for k in range(5)}
    assert sum(map(len, used.values())) == len(set().union(*used.values()))   # none in two splits


def test_an_out_inside_the_clips_is_refused(tmp_path, capsys):
    make_clips(tmp_path)
    error = one_line_error(mix_args(tmp_path, "clips/mixed"), capsys)
    assert "is inside --audio-dir" in error and not (tmp_path / "clips" / "mixed").exists()


def test_a_split_without_backgrounds_is_one_line(tmp_path, capsys):
    make_clips(tmp_path, background_recordings=2)
    error = one_line_error(mix_args(tmp_path), capsys)
    assert "the test split was dealt no background recording" in error


def test_a_folder_it_did_not_write_is_refused_without_overwrite(tmp_path, capsys):
    make_clips(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert "holds files train.mix did not write" in one_line_error(mix_args(tmp_path), capsys)
    mix.main(mix_args(tmp_path, "out", "--overwrite"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    mix.main(mix_args(tmp_path))   # the same command again: its own folder, mixed again
    assert "holds another mix" in one_line_error(mix_args(tmp_path, "out", "--seed", "5"), capsys)
    (tmp_path / "out" / "test" / "audio" / "keep.txt").write_text("also mine")
    before = tree(tmp_path / "out")
    mix.main(mix_args(tmp_path, "out", "--seed", "5", "--overwrite", "--split-fractions", "0.8,0.2,0"))
    after = tree(tmp_path / "out")
    assert after["notes.txt"] == b"mine" and after["mix_plan.json"] != before["mix_plan.json"]
    # the test split's soundscapes and lists are gone (no test split now), the file it did not write stays
    assert [name for name in after if name.startswith("test/")] == ["test/audio/keep.txt"]
    assert len([name for name in after if name.startswith("train/audio/Ymix-train-")]) == 16
    assert len([name for name in after if name.endswith(".wav")]) == 20   # 16 train + 4 validation


def test_a_looped_background_has_no_seam():
    # linear cross-fade ramps sum to 1, so a constant loops as that constant (float32 output: 1e-6)
    looped = loop_to(np.full(997, 0.25, np.float32), 601, 5003, 80)
    np.testing.assert_allclose(looped, 0.25, atol=1e-6)
    ramp = np.arange(1013, dtype=np.float32)
    assert np.array_equal(loop_to(ramp, 11, 500, 80), ramp[11:511])   # long enough: simply cut


def test_trim_cuts_quiet_frames_only():
    rng = np.random.default_rng(SEED)
    sound = rng.uniform(0.2, 0.5, 7 * FRAME + 37).astype(np.float32)
    waveform = np.concatenate([np.full(3 * FRAME, 1e-4, np.float32), sound, np.zeros(2 * FRAME, np.float32)])
    trimmed = trim_quiet(waveform, RATE, 40.0)
    # 1e-4 is over 60 dB under the sound: its frames go; the last frame partly holding sound stays whole
    assert np.array_equal(trimmed, waveform[3 * FRAME:11 * FRAME])
    assert np.array_equal(trim_quiet(waveform, RATE, 0.0), waveform)


@pytest.mark.parametrize("snr_db", [-3.5, 7.25, 31.0])
def test_an_event_sits_at_its_snr_over_the_background(snr_db):
    rng = np.random.default_rng(SEED)
    config = MixConfig(clip_seconds=1.0)
    background = [rng.standard_normal(5003).astype(np.float32)]   # looped: shorter than the soundscape
    event = [0.3 * np.sin(np.arange(2917) / 7.0).astype(np.float32)]
    alone, gain_alone = render(Plan(0, 1234, ()), config, event, background)
    mixed, gain = render(Plan(0, 1234, (Event(0, 3001, snr_db),)), config, event, background)
    assert gain == gain_alone == 1.0   # nothing near full scale: no scaling
    added = mixed.astype(np.float64) - alone
    # float32 output: the ratio holds to about 1e-6 relative, so 1e-4 dB
    assert 20 * np.log10(rms(added[3001:3001 + 2917]) / rms(alone)) == pytest.approx(snr_db, abs=1e-4)
    assert rms(alone) == pytest.approx(BACKGROUND_RMS, rel=1e-6)
    assert not added[:3001].any() and not added[3001 + 2917:].any()   # the event only where it was placed


def test_help_shows_the_real_command_and_every_option_has_a_help_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mix.main(["--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m train.mix ")
    parser = mix.build_parser()
    assert [action.option_strings for action in parser._actions if not action.help] == []


def test_config_rejects_a_reversed_snr_range():
    with pytest.raises(ValueError, match="--snr 9,3"):
        MixConfig(snr_db=(9.0, 3.0))


@pytest.mark.skipif(not (REAL_AUDIO / "labels.csv").is_file(), reason=f"{REAL_AUDIO} is absent (the shared "
                    "UrbanSound8K clips)")
def test_the_shared_urbansound8k_clips_mix_split_by_recording(tmp_path):
    backgrounds = {"air_conditioner", "engine_idling"}
    mix.main(["--manifest", str(REAL_AUDIO / "labels.csv"), "--audio-dir", str(REAL_AUDIO / "clips"),
              "--background-classes", ",".join(sorted(backgrounds)), "--out", str(tmp_path / "out"),
              "--soundscapes", "30"])
    report = json.loads((tmp_path / "out" / "mix_report.json").read_text())
    assert report["skipped"] == [] and set(report["splits"]) == {"train", "validation", "test"}
    assert not backgrounds & set(report["classes"]) and len(report["classes"]) == 8
    used = {split: rows(tmp_path / "out" / split / "sources.csv")[1:] for split in report["splits"]}
    manifest = {row[0]: row[3] for row in rows(REAL_AUDIO / "labels.csv")[1:]}   # filename -> recording
    recordings = {split: {manifest[row[3]] for row in used[split]} for split in used}
    assert not recordings["train"] & recordings["validation"] and not recordings["train"] & recordings["test"]
    assert not recordings["validation"] & recordings["test"]
    assert all((row[1] == "background") == (row[2] in backgrounds) for split in used.values() for row in split)


def test_the_commands_in_docs_are_the_ones_it_prints():
    docs = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    block = docs.split("## Soundscapes with strong labels")[1].split("```bash\n")[1].split("```")[0]
    text = " ".join(block.replace("\\\n", " ").split())
    report = {"config": {"clip_seconds": 10.0}, "splits": dict.fromkeys(("train", "validation", "test"))}
    *packs, run = mix.follow_up(Path("data/us8k-mix"), report)
    assert (" ".join(packs[0]) + " ").replace("/train/", "/$split/").replace("/train ", "/$split ") in text + " "
    assert " ".join(run) in text
    mixed = text.split(" for split")[0]
    assert mixed.startswith("python -m train.mix") and "--out data/us8k-mix " in mixed
