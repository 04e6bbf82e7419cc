"""`python -m train.examples`: the clips are the default run's test clips to the sample, the figure's clip is
three of them joined, events.tsv holds their true events, a folder it did not write is refused, and
`fastsca.tag` tags and draws one of its clips with the reference events beside the detected ones."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from train.examples import PLOT_INDICES, builtin_config, main
from train.data.synth import CLASS_NAMES, SynthConfig, make_clip

COUNT = 3


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples") / "examples"
    main(["--out", str(out), "--count", str(COUNT)])
    return out


def test_the_clips_are_the_default_runs_test_clips(examples):
    # the cache key of the default run's built-in set (the README's figure3 command names its folder)
    assert builtin_config("cpu").cache_key() == "a00b68602432"
    assert sorted(p.name for p in examples.iterdir()) == ["events.tsv", "tag-plot.wav", "test-000.wav",
                                                          "test-001.wav", "test-002.wav"]
    config = builtin_config("cpu")
    for index in range(COUNT):
        audio, rate = soundfile.read(examples / f"test-{index:03d}.wav", dtype="int16")
        assert rate == 16000 and np.array_equal(audio, make_clip(config, 1, index)[0])
    joined, _ = soundfile.read(examples / "tag-plot.wav", dtype="int16")
    assert np.array_equal(joined, np.concatenate([make_clip(config, 1, i)[0] for i in PLOT_INDICES]))


def test_events_tsv_holds_every_clips_true_events(examples):
    config = builtin_config("cpu")
    with open(examples / "events.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["filename", "onset", "offset", "event_label"]
    got = sorted((name, float(onset), float(offset), label) for name, onset, offset, label in rows[1:])
    want = [(f"test-{i:03d}.wav", round(a, 3), round(b, 3), CLASS_NAMES[k]) for i in range(COUNT)
            for a, b, k in make_clip(config, 1, i)[2]]
    want += [("tag-plot.wav", round(a + n * 2.0, 3), round(b + n * 2.0, 3), CLASS_NAMES[k])
             for n, i in enumerate(PLOT_INDICES) for a, b, k in make_clip(config, 1, i)[2]]
    # 1e-9: the file holds each time to 3 decimals (write_dcase_tsv); both sides are rounded the same way
    assert [g[0] for g in got] == [w[0] for w in sorted(want)]
    np.testing.assert_allclose([g[1:3] for g in got], [w[1:3] for w in sorted(want)], atol=1e-9, rtol=0)
    assert [g[3] for g in got] == [w[3] for w in sorted(want)]


def test_a_folder_it_did_not_write_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--count", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == (f"error: --out {out}: holds notes.txt, which train.examples did "
                                                 f"not write; give a new or empty folder, or --overwrite to write "
                                                 f"the examples beside them\n")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    main(["--out", str(out), "--count", "1", "--overwrite"])   # beside the user's file, which stays
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "test-000.wav").is_file()


@pytest.mark.parametrize("name", ["events.tsv", "test-000.wav", "tag-plot.wav"])
def test_a_users_file_of_one_of_its_names_is_refused_and_kept(tmp_path, name, capsys):
    """Its names alone do not make a file its own: a user's events.tsv (DCASE layout, other files) or recording
    named like one of its clips is refused, left byte for byte."""
    out = tmp_path / "mine"
    out.mkdir()
    if name == "events.tsv":
        (out / name).write_text("filename\tonset\toffset\tevent_label\nstreet.wav\t0.250\t1.500\tsiren\n")
    else:
        soundfile.write(out / name, np.random.default_rng(5).integers(-999, 999, 1601, dtype=np.int16), 16000)
    before = (out / name).read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--count", "1"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(
        f"error: --out {out}: holds {name}, which train.examples did not write;")
    assert (out / name).read_bytes() == before and [p.name for p in out.iterdir()] == [name]


def test_its_own_folder_is_written_again(examples, capsys):
    before = (examples / "tag-plot.wav").read_bytes()
    main(["--out", str(examples), "--count", "1"])   # fewer clips: the others stay, the written ones are the same
    assert (examples / "tag-plot.wav").read_bytes() == before and (examples / "test-002.wav").exists()
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 3 files into {examples}: test-000.wav, tag-plot.wav, events.tsv\n")
    assert "built-in synthetic classes (tone, up-chirp" in out and "not real-world sounds" in out


def test_another_profile_and_bad_counts(tmp_path, capsys):
    assert builtin_config("gpu") == SynthConfig(clip_seconds=10.0, event_seconds=(1.0, 4.0), n_train=8192, n_eval=1024)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--count", "0"])
    assert "--count must be in 1..512 (the test split's clips), got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fastsca_tag_tags_and_draws_its_clip(examples, full_run, tmp_path):
    """The README's tag and plot command on the figure's clip, with its true events drawn beside."""
    figure = tmp_path / "tags.png"
    result = subprocess.run([sys.executable, "-m", "fastsca.tag", str(examples / "tag-plot.wav"), "--checkpoint",
                             str(full_run / "best.pt"), "--events", "--out", str(tmp_path / "events"), "--plot",
                             str(figure), "--strong", str(examples / "events.tsv"), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (tagged,) = json.loads(result.stdout)
    assert tagged["file"].endswith("tag-plot.wav") and tagged["seconds"] == 6.0 and len(tagged["labels"]) == 5
    assert {label["label"] for label in tagged["labels"]} <= set(CLASS_NAMES)
    assert tagged["plot"] == str(figure) and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
