"""`fastsca.tag` against odd inputs: odd files, every numeric option at 0, negative, NaN, infinite and huge, paths
in different spellings, the same file twice, a full disk, a start beyond the end, a closed pipe. Each is
handled or is one clear line, and the rest of the batch is still tagged."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fastsca import audio, plot, tag
from fastsca.tagging import batch, stream, table as tag_table
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """An untrained 1 s-window SCA-3 checkpoint: faults do not depend on the weights."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))
    return str(path)


@pytest.fixture(autouse=True)
def small_figures(monkeypatch):
    """A one-panel figure in place of the full one: what is tested here is where figures go, not what they show
    (the full figure takes seconds to draw)."""
    monkeypatch.setattr(plot, "_figure", lambda *args: plot.plt.figure(figsize=(1, 1)))


def noise(rng, samples: int, channels: int = 1) -> np.ndarray:
    return (0.1 * rng.standard_normal((samples, channels))).astype(np.float32)


def run_tag(argv: list[str], capsys) -> tuple[int, list[dict], list[str]]:
    """(exit status, the JSON results, the stderr lines) of `fastsca.tag ARGV --json` run in this process."""
    try:
        tag.main(argv + ["--json"])
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, json.loads(captured.out) if captured.out.strip() else [], captured.err.strip().splitlines()


def odd_file(kind: str, folder: Path, rng) -> tuple[str, str | None, bool]:
    """Make an odd input: (its path, the start of the one line it gets or None, whether it is tagged)."""
    path = folder / {"folder-named-like-audio": "x.wav", "wrong-extension": "flac-inside.wav"}.get(kind, f"{kind}.wav")
    if kind == "zero-length":
        soundfile.write(path, np.zeros((0, 1), np.float32), 16000)
        return str(path), f"error: {path}: the file holds no samples", False
    if kind == "one-sample":
        soundfile.write(path, noise(rng, 1), 16000)
        return str(path), None, True
    if kind == "antiphase-stereo":   # the mono mix is digital silence; the loudest channel is not
        left = noise(rng, int(rng.integers(8000, 30000)))
        soundfile.write(path, np.concatenate([left, -left], axis=1), 16000, subtype="FLOAT")
        return str(path), None, True
    if kind == "six-channels":
        soundfile.write(path, noise(rng, 20000, 6), 16000)
        return str(path), None, True
    if kind == "wrong-extension":
        soundfile.write(path, noise(rng, 20000), 16000, format="FLAC")
        return str(path), None, True
    if kind == "folder-named-like-audio":
        path.mkdir()
        return str(path), f"note: {path}: no audio file in this folder", False
    if kind == "not-audio":
        path.write_bytes(rng.bytes(3000))
        return str(path), f"error: {path}: cannot decode audio", False
    if kind == "symlink-loop":   # a folder with a link to itself, and one file
        path = folder / "looped"
        path.mkdir()
        soundfile.write(path / "in.wav", noise(rng, 16000), 16000)
        (path / "again").symlink_to(path)
        return str(path), f"note: {path / 'again'}: a link to a folder already walked (a symlink loop)", True
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["zero-length", "one-sample", "antiphase-stereo", "six-channels", "wrong-extension",
                                  "folder-named-like-audio", "not-audio", "symlink-loop"])
def test_odd_files_are_handled_or_one_line_and_the_batch_goes_on(model, tmp_path, kind, capsys):
    rng = np.random.default_rng(53158)
    good = tmp_path / "good.wav"
    soundfile.write(good, noise(rng, 24000), 16000)
    odd, line, tagged = odd_file(kind, tmp_path, rng)
    code, results, errors = run_tag([odd, str(good), "--checkpoint", model], capsys)
    assert results[-1]["file"] == str(good) and len(results) == 1 + tagged
    if kind == "antiphase-stereo":
        assert results[0]["silent"] is False and len(results[0]["labels"]) == len(LABELS)
    if kind == "one-sample":
        assert results[0]["seconds"] == 0.0 and results[0]["silent"] is True   # one sample repeated: DC, no sound
    if line is None:
        assert (code, errors) == (0, [])
    else:
        assert errors[0].startswith(line)
        unread, skipped = kind in ("zero-length", "not-audio"), kind in ("folder-named-like-audio", "symlink-loop")
        assert errors[1:] == (["note: 1 input(s) passed over"] if skipped else []) + (
            ["error: 1 of 2 files could not be read"] if unread else [])   # each kind counted in one closing line
        assert code == (2 if unread else 0)


def test_an_unreadable_file_and_folder_are_one_line_each(model, tmp_path, capsys, monkeypatch):
    # run as root here, so permissions do not stop a read: the operating system's refusal is simulated
    rng = np.random.default_rng(30076)
    folder = tmp_path / "music"
    (folder / "locked").mkdir(parents=True)
    for name in ("a.wav", "secret.wav"):
        soundfile.write(folder / name, noise(rng, 16000), 16000)

    def refuse(name: str, real):
        def guarded(path, *args, **kwargs):
            if Path(path).name == name:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return guarded

    monkeypatch.setattr(stream, "open", refuse("secret.wav", open), raising=False)
    monkeypatch.setattr(os, "scandir", refuse("locked", os.scandir))
    code, results, errors = run_tag([str(folder), "--checkpoint", model], capsys)
    assert [r["file"] for r in results] == ["a.wav"] and code == 2
    assert errors == [f"note: {folder / 'locked'}: cannot list the folder (Permission denied); skipped",
                      f"error: {folder / 'secret.wav'}: cannot open it (Permission denied); check its permissions",
                      "note: 1 input(s) passed over", "error: 1 of 2 files could not be read"]


# (option, value, what happens): "ok" is tagged; "error" is one line before any work, exit 2; "no-figure" is
# tagged with a one-line error for its figure, exit 2.
NUMERIC_CASES = [
    ("--top-k", "0", "error"), ("--top-k", "-2", "error"), ("--top-k", "nan", "error"), ("--top-k", "inf", "error"),
    ("--top-k", "1000000000000", "ok"),
    ("--threshold", "0", "error"), ("--threshold", "-0.5", "error"), ("--threshold", "nan", "error"),
    ("--threshold", "inf", "error"), ("--threshold", "1e300", "error"),
    ("--overlap", "0", "ok"), ("--overlap", "-0.1", "error"), ("--overlap", "nan", "error"),
    ("--overlap", "inf", "error"), ("--overlap", "1e300", "error"),
    ("--threads", "0", "error"), ("--threads", "-1", "error"), ("--threads", "nan", "error"),
    ("--threads", "1000000000", "error"),
    ("--start", "0", "ok"), ("--start", "-1", "error"), ("--start", "nan", "error"), ("--start", "inf", "error"),
    ("--start", "1e300", "no-figure"),
    ("--end", "0", "error"), ("--end", "-1", "error"), ("--end", "nan", "error"), ("--end", "inf", "error"),
    ("--end", "1e300", "ok"),
]


@pytest.mark.parametrize("option, value, outcome", NUMERIC_CASES, ids=[f"{o}={v}" for o, v, _ in NUMERIC_CASES])
def test_numeric_options_at_their_edges(model, tmp_path, option, value, outcome, capsys):
    rng = np.random.default_rng(48202)
    files = [tmp_path / "a.wav", tmp_path / "b.wav"]
    lengths = rng.integers(16000, 40000, size=2)
    for path, length in zip(files, lengths):
        soundfile.write(path, noise(rng, int(length)), 16000)
    figures = tmp_path / "figures"
    plotting = option in ("--start", "--end")
    code, results, errors = run_tag([*map(str, files), "--checkpoint", model, "--events", "--out", str(tmp_path),
                                     *(["--plot", f"{figures}{os.sep}"] if plotting else []), option, value], capsys)
    if outcome == "error":
        assert code == 2 and results == [] and len(errors) == 1
        not_an_int = value in ("nan", "inf") and option in ("--top-k", "--threads")   # argparse's own message
        assert errors[0].startswith(f"error: argument {option}: invalid int value" if not_an_int else
                                    f"error: {option} {float(value):g}: out of range; ")
        assert not figures.exists()
        return
    assert [r["file"] for r in results] == list(map(str, files))
    assert [r["seconds"] for r in results] == [round(int(n) / 16000, 3) for n in lengths]
    assert all(len(r["labels"]) == (len(LABELS) if option == "--top-k" else 5) for r in results)
    if outcome == "ok":
        assert code == 0 and errors[-1].startswith(f"{len(sum((r['events'] for r in results), []))} events: ")
        assert sorted(p.name for p in figures.glob("*")) == (["a.png", "b.png"] if plotting else [])
    else:
        analysed = [f"{n // 1600 / 10:.1f}" for n in lengths]
        assert code == 2 and errors[:2] == [f"error: {f}: --start 1e+300 s is at or beyond its end ({s} s analysed); "
                                            f"no figure for it: give an earlier --start"
                                            for f, s in zip(files, analysed)]
        assert errors[-1] == "error: 2 figure(s) or result file(s) were not written (see above)"
        assert list(figures.iterdir()) == []


@pytest.mark.parametrize("spelling", ["relative", "dot-slash", "trailing-slash", "folder-trailing-slash", "spaces",
                                      "unicode", "twice", "twice-respelt"])
def test_paths_in_different_spellings(model, tmp_path, spelling, capsys, monkeypatch):
    rng = np.random.default_rng(95273)
    name = {"spaces": "my clip 1.wav", "unicode": "café ♪ 音.wav"}.get(spelling, "clip.wav")
    (tmp_path / "in").mkdir()
    soundfile.write(tmp_path / "in" / name, noise(rng, 20000), 16000)
    monkeypatch.chdir(tmp_path)
    given, expected, notes = {
        "relative": ([f"in/{name}"], [f"in/{name}"], []),
        "dot-slash": ([f"./in/{name}"], [f"./in/{name}"], []),
        "trailing-slash": ([f"in/{name}/"], [f"in/{name}"], []),
        "folder-trailing-slash": (["in/"], [name], []),
        "spaces": ([f"in/{name}"], [f"in/{name}"], []),
        "unicode": ([f"in/{name}"], [f"in/{name}"], []),
        "twice": ([f"in/{name}", f"in/{name}"], [f"in/{name}"], [f"note: in/{name}: given twice (as in/{name}); "
                                                                 f"tagged once"]),
        "twice-respelt": (["in", f"./in/{name}"], [f"in/{name}"], [f"note: ./in/{name}: given twice (as in/{name}); "
                                                                   f"tagged once"]),
    }[spelling]
    code, results, errors = run_tag([*given, "--checkpoint", model, "--plot", "figs/", "--top-k", "1"], capsys)
    counted = ["note: 1 input(s) passed over; listed in figs/tag-report.txt"] if notes else []   # the report: beside
    assert code == 0 and errors == notes + counted                                               # the figures
    assert [r["file"] for r in results] == expected and all(r["seconds"] == 1.25 for r in results)
    stem = Path(expected[0]).with_suffix("")
    figure = Path("figs") / (stem if ".." not in stem.parts and not stem.is_absolute() else stem.name)
    assert [r["plot"] for r in results] == [f"{figure.with_suffix('.png')}"]
    assert Path(results[0]["plot"]).read_bytes()[:4] == b"\x89PNG"


def full_disk_after(real_write, budget: list[int]):
    """A write that stores `budget[0]` bytes in all, then fails as a full disk does (ENOSPC)."""
    def write(*args, **kwargs):
        data = args[-1]
        if len(data) > budget[0]:
            real_write(*args[:-1], data[: budget[0]])
            budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        budget[0] -= len(data)
        return real_write(*args, **kwargs)
    return write


def test_a_full_disk_is_one_line_per_failure_and_leaves_no_partial_file(model, tmp_path, capsys, monkeypatch):
    import matplotlib.figure
    rng = np.random.default_rng(95)
    files = [tmp_path / f"{n}.wav" for n in "abc"]
    for path in files:
        soundfile.write(path, noise(rng, int(rng.integers(16000, 30000))), 16000)
    figures, out, table = tmp_path / "figs", tmp_path / "out", tmp_path / "t.csv"
    real_savefig = matplotlib.figure.Figure.savefig
    calls = []

    def savefig(self, path, **kwargs):   # the second figure meets a full disk halfway through
        calls.append(path)
        real_savefig(self, path, **kwargs)
        if len(calls) == 2:
            Path(path).write_bytes(Path(path).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    def write_json(path, events):   # events.json meets a full disk after its first bytes
        Path(path).write_text("[{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "write_json", write_json)
    budget = [10 ** 9]
    monkeypatch.setattr(tag_table.os, "write", full_disk_after(os.write, budget))

    def table_full_at_row_c(item_result):
        budget[0] = 10 if item_result["file"] == str(files[2]) else 10 ** 9
    real_append = tag_table.ResultTable.append
    monkeypatch.setattr(tag_table.ResultTable, "append", lambda self, r, *stamp: (table_full_at_row_c(r),
                                                                                  real_append(self, r, *stamp)))
    code, results, errors = run_tag([*map(str, files), "--checkpoint", model, "--plot", f"{figures}/", "--events",
                                     "--out", str(out), "--table", str(table)], capsys)
    assert code == 2 and [r["file"] for r in results] == list(map(str, files))   # every file still tagged
    assert errors[:3] == [
        f"error: {files[1]}: cannot write the figure {figures / 'b.png'} (No space left on device); free some space "
        f"or give another --plot",
        f"error: {files[2]}: cannot add its row to --table {table} (No space left on device); free some space and "
        f"run again to tag it",
        f"error: --out {out}: cannot write events.json (No space left on device); free some space and run again"]
    assert errors[-1] == "error: 3 figure(s) or result file(s) were not written (see above)"
    assert sorted(p.name for p in figures.iterdir()) == ["a.png", "c.png"]           # no 0-byte png, no .tmp
    assert sorted(p.name for p in out.iterdir()) == [".fastsca-tag.lock", "events.tsv", "events_dcase.tsv",
                                                     "tag-report.txt"]
    report = (out / "tag-report.txt").read_text()                                      # the report lists all three
    assert "3 figure(s) or result file(s) were not written\n" in report and "cannot write events.json" in report
    rows = table.read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["file", str(files[0]), str(files[1])]   # no half row of c


@pytest.mark.slow
def test_a_closed_pipe_stops_printing_quietly_and_still_writes_the_files(model, tmp_path):
    rng = np.random.default_rng(34949)
    files = [tmp_path / "first.wav", tmp_path / "second.wav"]
    soundfile.write(files[0], noise(rng, 16000), 16000)
    soundfile.write(files[1], noise(rng, 16000 * 8), 16000)   # long enough to be tagged after the pipe closes
    with subprocess.Popen([sys.executable, "-m", "fastsca.tag", *map(str, files), "--checkpoint", model, "--events",
                           "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        first = process.stdout.readline()                  # `| head -n 1`
        process.stdout.close()
        stderr = process.stderr.read()
        code = process.wait(timeout=120)
    assert first == f"{files[0]} (1.0 s)\n"
    assert code == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr
    events = json.loads((tmp_path / "out" / "events.json").read_text())
    assert {e["file"] for e in events} <= set(map(str, files)) and (tmp_path / "out" / "events.tsv").exists()


def test_antiphase_stereo_is_tagged_as_its_loudest_channel_as_the_packer_reads_it(model, tmp_path, capsys):
    rng = np.random.default_rng(26)
    left = noise(rng, 27_001)                                   # odd length: 1.69 s at 16 kHz, three windows
    stereo, mono = tmp_path / "antiphase.wav", tmp_path / "left.wav"
    soundfile.write(stereo, np.concatenate([left, -left], axis=1), 16000, subtype="FLOAT")
    soundfile.write(mono, left, 16000, subtype="FLOAT")
    code, results, errors = run_tag([str(stereo), str(mono), "--checkpoint", model], capsys)
    assert (code, errors) == (0, [])
    assert results[0]["silent"] is False and results[0]["labels"] == results[1]["labels"]   # not "silent: no tags"
    # one rule for both readers: the streaming reader's blocks are what the packer's load_audio gives
    streamed = np.concatenate(list(stream.read_blocks(str(stereo), 16000)))
    np.testing.assert_array_equal(streamed, audio.load_audio(stereo, 16000))
