"""`fastsca.tag DIR --table OUT.csv`: a folder walked recursively, one row per file written as it goes, a resumed run
that skips finished files and cuts off a half-written last row, and same-named files in different folders
kept apart in the table, the events and the figures."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fastsca import tag
from fastsca.inference import load_trained_model
from fastsca.tagging import engine

from test_faults_tag import model, small_figures  # noqa: F401 (fixtures: an untrained checkpoint, one-panel figures)


def music_folder(root: Path, rng) -> dict[str, int]:
    """A tree of audio files of random lengths (relative name -> samples), with a text file, a hidden file and a
    wav inside a .dat name beside them."""
    names = ["one/same.wav", "two/same.wav", "two/deeper/clip.flac", "top.ogg", "disguised.dat"]
    lengths = {}
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        lengths[name] = int(rng.integers(12000, 40000))
        fmt = {"flac": "FLAC", "ogg": "OGG", "dat": "WAV"}.get(name.rsplit(".", 1)[1], "WAV")
        soundfile.write(root / name, (0.1 * rng.standard_normal(lengths[name])).astype(np.float32), 16000,
                        format=fmt)
    (root / "notes.txt").write_text("not audio\n")
    (root / ".hidden.wav").write_text("passed over\n")
    return lengths


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))


def test_a_folder_is_walked_and_same_names_stay_apart(model, tmp_path, capsys):
    rng = np.random.default_rng(39254)
    root = tmp_path / "music"
    lengths = music_folder(root, rng)
    table, out, figures = tmp_path / "tags.tsv", tmp_path / "events", tmp_path / "figs"
    tag.main([str(root), "--checkpoint", model, "--table", str(table), "--events", "--out", str(out), "--top-k", "2",
              "--plot", f"{figures}/"])
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (f"note: {root / 'notes.txt'}: not an audio file (no audio extension, and "
                                            f"soundfile cannot read it); skipped")
    names = ["disguised.dat", "one/same.wav", "top.ogg", "two/deeper/clip.flac", "two/same.wav"]
    rows = read_table(table)
    assert [row["file"] for row in rows] == names
    assert [row["seconds"] for row in rows] == [f"{lengths[n] / 16000:.3f}" for n in names]
    trained = load_trained_model(model)
    for row in rows:   # each row holds that file's own top 2, as tag_file gives them
        best = engine.tag_file(trained, str(root / row["file"])).top_k(2)
        assert [(row["label_1"], row["score_1"]), (row["label_2"], row["score_2"])] == [
            (name, f"{round(p, 4):.4f}") for name, p in best]
    events = json.loads((out / "events.json").read_text())
    assert {e["file"] for e in events} <= set(names)
    assert [[e["onset"], e["offset"], e["label"], e["score"]] for e in events if e["file"] == "two/same.wav"] == \
        json.loads(rows[-1]["events"])
    figures_made = sorted(p.relative_to(figures).as_posix() for p in figures.rglob("*.png"))
    assert figures_made == ["disguised.png", "one/same.png", "top.png", "two/deeper/clip.png", "two/same.png"]


def test_a_resumed_run_skips_finished_files_and_cuts_a_half_written_row(model, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(2796)
    root = tmp_path / "music"
    music_folder(root, rng)
    table, out = tmp_path / "tags.csv", tmp_path / "events"
    argv = [str(root), "--checkpoint", model, "--table", str(table), "--events", "--out", str(out)]
    tag.main(argv)
    whole_table, whole_events = table.read_bytes(), (out / "events.json").read_text()
    lines = whole_table.splitlines(keepends=True)
    cut = int(rng.integers(1, len(lines[3]) - 1))
    table.write_bytes(b"".join(lines[:3]) + lines[3][:cut])     # killed while writing the third file's row
    capsys.readouterr()
    tagged = []
    real_tag_file = engine.tag_file
    monkeypatch.setattr(engine, "tag_file", lambda trained, path, *a, **k: tagged.append(path) or
                        real_tag_file(trained, path, *a, **k))
    tag.main(argv)
    assert [Path(p).relative_to(root).as_posix() for p in tagged] == ["top.ogg", "two/deeper/clip.flac",
                                                                      "two/same.wav"]
    assert "resuming: 2 file(s) already in" in capsys.readouterr().err
    assert table.read_bytes() == whole_table                       # the same rows, each once, no half row
    assert (out / "events.json").read_text() == whole_events       # the earlier files' events are kept too
    tagged.clear()
    tag.main(argv)                                                  # all done: nothing to tag
    assert tagged == [] and table.read_bytes() == whole_table


def test_a_table_written_with_other_options_is_refused(model, tmp_path, capsys):
    rng = np.random.default_rng(56634)
    soundfile.write(tmp_path / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    table = tmp_path / "t.csv"
    tag.main([str(tmp_path / "a.wav"), "--checkpoint", model, "--table", str(table), "--top-k", "2"])
    before = table.read_bytes()
    for extra in (["--top-k", "3"], ["--top-k", "2", "--events"]):
        with pytest.raises(SystemExit) as stopped:
            tag.main([str(tmp_path / "a.wav"), "--checkpoint", model, "--table", str(table), *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stopped.value.code == 2 and len(lines) == 1
        assert lines[0].startswith(f"error: --table {table}: its columns (file, seconds, silent, label_1, ...) are "
                                   f"not this run's")
    assert table.read_bytes() == before
    with pytest.raises(SystemExit):
        tag.main([str(tmp_path / "a.wav"), "--checkpoint", model, "--table", str(tmp_path / "t.xlsx")])
    assert capsys.readouterr().err.strip() == f"error: --table {tmp_path / 't.xlsx'}: name it .csv or .tsv (the " \
                                              f"layout follows the extension)"


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_an_archive_is_read_member_by_member_without_unpacking(model, tmp_path, kind, capsys):
    import shutil
    rng = np.random.default_rng(63321)
    root = tmp_path / "music"
    lengths = music_folder(root, rng)
    (root / "broken.wav").write_bytes(rng.bytes(500))
    archive = Path(shutil.make_archive(str(tmp_path / "music"), {"zip": "zip", "tar": "tar", "tar.gz": "gztar"}[kind],
                                       root))
    shutil.rmtree(root)
    table = tmp_path / "tags.csv"
    with pytest.raises(SystemExit) as stopped:
        tag.main([str(archive), "--checkpoint", model, "--table", str(table), "--top-k", "1"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and errors[0].startswith(
        f"error: {archive}/broken.wav: cannot decode audio (Error opening '{archive}/broken.wav'")
    assert errors[1:] == ["error: 1 of 5 files could not be read"]
    names = ["one/same.wav", "top.ogg", "two/deeper/clip.flac", "two/same.wav"]   # by extension: no disguised.dat
    rows = read_table(table)
    assert [(row["file"], row["seconds"]) for row in rows] == [(n, f"{lengths[n] / 16000:.3f}") for n in names]
    # nothing unpacked: beside the table only its lock and stamps and the run's report, which lists the unread member
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "tags.csv", ".tags.csv.lock",
                                                                 ".tags.csv.stamps", ".fastsca-tag.lock",
                                                                 "tag-report.txt"])
    assert f"1 file(s) could not be read\n  {archive}/broken.wav: cannot decode audio" in (
        tmp_path / "tag-report.txt").read_text()


def test_ctrl_c_keeps_the_finished_rows_and_says_how_to_resume(model, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(55695)
    root = tmp_path / "music"
    music_folder(root, rng)
    table = tmp_path / "tags.csv"
    real_tag_file, calls = engine.tag_file, []

    def interrupted_at_the_third(trained, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_tag_file(trained, path, *args, **kwargs)

    monkeypatch.setattr(engine, "tag_file", interrupted_at_the_third)
    with pytest.raises(SystemExit) as stopped:
        tag.main([str(root), "--checkpoint", model, "--table", str(table)])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("interrupted after 2 of 5 files; run the same command "
                                                                "again to tag the rest")
    assert [row["file"] for row in read_table(table)] == ["disguised.dat", "one/same.wav"]
