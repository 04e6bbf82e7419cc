"""`fastsca.tag --table`: a file that is not a tag table is never cut or overwritten, two runs on one table are
locked out of each other, a damaged resumed table is repaired without losing or doubling events, and every
repair is counted and listed in the run's report."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastsca import tag
from fastsca.tagging.outputs import take_lock
from fastsca.tagging.table import ResultTable, table_columns
from train import checkpoint

from test_checkpoint import tiny_config, tiny_payload

from test_faults_tag import model, run_tag, small_figures  # noqa: F401 (fixtures: an untrained checkpoint, figures)


def clips(folder: Path, rng, count: int = 3) -> list[Path]:
    """`count` noise clips of odd lengths (0.8 to 1.9 s at 16 kHz)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"c{i}.wav" for i in range(count)]
    for path in paths:
        soundfile.write(path, (0.1 * rng.standard_normal(int(rng.integers(12_801, 30_401)))).astype(np.float32), 16000)
    return paths


@pytest.mark.parametrize("content", [b"name,age\nann,31\nbob,4", b"no newline at all", b"\x89PNG\r\n\x1a\n\x00\x00",
                                     b"file,seconds\nx.wav,1.0\n"])
def test_a_file_that_is_not_a_tag_table_is_left_as_it_was(model, tmp_path, content, capsys):
    rng = np.random.default_rng(261)
    files = clips(tmp_path / "in", rng)
    table = tmp_path / "people.csv"
    table.write_bytes(content)
    code, results, errors = run_tag([str(tmp_path / "in"), "--checkpoint", model, "--table", str(table)], capsys)
    assert (code, results) == (2, []) and table.read_bytes() == content          # not cut, not overwritten
    assert errors == [f"error: --table {table}: exists and is not a table written by fastsca.tag; it was left as it "
                      f"is: give another --table, or add --overwrite to replace it"]
    code, results, errors = run_tag([str(tmp_path / "in"), "--checkpoint", model, "--table", str(table),
                                     "--overwrite"], capsys)
    assert code == 0 and [row[0] for row in csv.reader(table.open())] == ["file"] + [f.name for f in files]


def test_overwrite_is_named_in_help(capsys):
    with pytest.raises(SystemExit):
        tag.main(["--help"])
    assert "--overwrite" in capsys.readouterr().out


def test_two_runs_on_one_table_are_locked_out_of_each_other(model, tmp_path, capsys):
    rng = np.random.default_rng(262)
    clips(tmp_path / "in", rng, 1)
    table = tmp_path / "tags.csv"
    other_run = ResultTable(table, table_columns(5, False))        # another run holds the table
    code, results, errors = run_tag([str(tmp_path / "in"), "--checkpoint", model, "--table", str(table)], capsys)
    assert (code, results) == (2, [])
    assert errors == [f"error: --table {table}: another fastsca.tag run is writing it (locked: "
                      f"{tmp_path / '.tags.csv.lock'}); wait for that run to finish, or give another --table"]
    other_run.close()                                               # that run ends: the lock goes with it
    code, results, errors = run_tag([str(tmp_path / "in"), "--checkpoint", model, "--table", str(table)], capsys)
    assert code == 0 and [r["file"] for r in results] == ["c0.wav"]


def with_events(line: bytes, events: str) -> bytes:
    """A table row with its events column replaced."""
    row = next(csv.reader([line.decode()]))
    return (",".join(row[:-1]) + ',"' + events.replace('"', '""') + '"\n').encode()


def test_two_runs_writing_one_output_folder_are_locked_out_of_each_other(model, tmp_path, capsys):
    rng = np.random.default_rng(266)
    clips(tmp_path / "in", rng, 1)
    out = tmp_path / "out"
    out.mkdir()
    other_run = take_lock(out / ".fastsca-tag.lock", f"--out {out}", "give another --out")   # its events files
    argv = [str(tmp_path / "in"), "--checkpoint", model, "--events", "--out", str(out)]
    code, results, errors = run_tag(argv, capsys)
    assert (code, results, sorted(p.name for p in out.iterdir())) == (2, [], [".fastsca-tag.lock"])
    assert errors == [f"error: --out {out}: another fastsca.tag run is writing it (locked: {out / '.fastsca-tag.lock'}"
                      f"); wait for that run to finish, or give another --out"]
    os.close(other_run)
    assert run_tag(argv, capsys)[0] == 0 and (out / "events.json").exists()


@pytest.mark.parametrize("damage", ["blank-line", "shortened-row", "duplicated-row", "duplicated-other-values",
                                    "bad-events"])
def test_a_damaged_table_is_repaired_without_losing_or_doubling_events(model, tmp_path, damage, capsys):
    rng = np.random.default_rng(263)
    files = clips(tmp_path / "in", rng, 4)
    table, out = tmp_path / "tags.csv", tmp_path / "out"
    argv = [str(tmp_path / "in"), "--checkpoint", model, "--table", str(table), "--events", "--out", str(out),
            "--threshold", "0.3"]
    assert run_tag(argv, capsys)[0] == 0
    whole_table, whole_events = table.read_bytes(), json.loads((out / "events.json").read_text())
    assert len(whole_events) >= 4                                   # every clip has an event at 0.3
    lines = whole_table.splitlines(keepends=True)                   # header, c0, c1, c2, c3
    damaged, dropped = {
        "blank-line": (lines[:2] + [b"\n"] + lines[2:], [(3, "a blank line")]),
        "shortened-row": (lines[:2] + [b"c1.wav,1.2\n"] + lines[3:], [(3, "2 fields for 14 columns (a shortened "
                                                                          "or damaged row)")]),
        "duplicated-row": (lines + [lines[2]], [(6, "a second row for 'c1.wav' (the first is kept)")]),
        "duplicated-other-values": (lines + [lines[2].replace(b"c1.wav,", b"c1.wav,9")],
                                    [(6, "a second row for 'c1.wav' (the first is kept)")]),
        "bad-events": (lines[:2] + [with_events(lines[2], '[[1.0,0.5,"a"]]')] + lines[3:],   # offset before onset
                       [(3, "its seconds or events do not read")]),
    }[damage]
    table.write_bytes(b"".join(damaged))
    code, results, errors = run_tag(argv, capsys)
    assert code == 0
    report = out / "tag-report.txt"
    assert errors[:len(dropped)] == [f"note: --table {table}: line {n} dropped: {why}" for n, why in dropped]
    assert f"note: {len(dropped)} table row(s) dropped in repair; listed in {report}" in errors
    assert f"{len(dropped)} table row(s) dropped in repair\n" in report.read_text()
    tagged_again = ["c1.wav"] if damage in ("shortened-row", "bad-events") else []
    assert [r["file"] for r in results] == tagged_again             # the dropped row's file only
    rows = list(csv.reader(table.open()))
    assert sorted(row[0] for row in rows[1:]) == [f.name for f in files]              # each file once
    assert sorted(map(tuple, rows)) == sorted(map(tuple, csv.reader(whole_table.decode().splitlines())))
    assert json.loads((out / "events.json").read_text()) == whole_events              # none lost, none doubled


def test_an_archive_only_run_that_reads_nothing_exits_non_zero(model, tmp_path, capsys):
    broken = tmp_path / "field-day.zip"
    broken.write_bytes(np.random.default_rng(264).bytes(700))                       # not a zip
    code, results, errors = run_tag([str(broken), "--checkpoint", model], capsys)
    assert (code, results) == (2, [])
    assert errors[0].startswith(f"note: {broken}: cannot read the archive (")
    assert errors[1:] == [f"note: {broken}: no audio file in this archive", "note: 2 input(s) passed over",
                          f"error: nothing to tag in {broken} (see the notes above)"]


def test_odd_file_names_in_a_folder_and_its_table_do_not_traceback(model, tmp_path, capsys):
    rng = np.random.default_rng(265)
    folder = tmp_path / "in"
    folder.mkdir()
    raw_names = [b"caf\xe9.wav", b"new\nline.wav", b'quo"te,comma.wav', b"tab\there.wav", b"-dash.wav"]
    for raw in raw_names:   # written through an open file: soundfile cannot open a name that is not UTF-8
        with open(os.path.join(os.fsencode(folder), raw), "wb") as handle:
            soundfile.write(handle, (0.1 * rng.standard_normal(17_001)).astype(np.float32), 16000, format="WAV")
    table = tmp_path / "tags.tsv"
    code, results, errors = run_tag([str(folder), "--checkpoint", model, "--table", str(table)], capsys)
    assert (code, errors, len(results)) == (0, [], 5)                # run_tag: and no traceback
    code, results, errors = run_tag([str(folder), "--checkpoint", model, "--table", str(table)], capsys)
    assert (code, errors, results) == (0, [f"resuming: 5 file(s) already in {table}; tagging the other 0"], [])
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        names = [row[0] for row in csv.reader(handle, delimiter="\t")][1:]
    assert sorted(map(os.fsencode, names)) == sorted(raw_names)      # each name byte for byte, each once


def test_a_table_is_never_resumed_with_another_model_or_overlap(model, tmp_path, capsys):
    """Its rows carry the settings they were made with (in its lock file): the same weights under another name
    resume it; other weights or another --overlap are refused, the table left as it was; --overwrite starts it
    again."""
    files = [str(p) for p in clips(tmp_path / "in", np.random.default_rng(7), count=2)]
    table = tmp_path / "t.csv"
    assert run_tag(["--checkpoint", model, files[0], "--table", str(table)], capsys)[0] == 0
    renamed = tmp_path / "same-weights.pt"
    renamed.write_bytes(Path(model).read_bytes())
    assert run_tag(["--checkpoint", str(renamed), *files, "--table", str(table)], capsys)[0] == 0
    before = table.read_bytes()
    torch.manual_seed(11)   # other weights, the same classes and front end
    other = tmp_path / "other.pt"
    checkpoint.save(other, tiny_payload(tiny_config()))
    for argv, changed in ((["--checkpoint", str(other)], "model"), (["--checkpoint", model, "--overlap", "0.25"],
                                                                     "overlap")):
        code, _, err = run_tag([*argv, *files, "--table", str(table)], capsys)
        assert code == 2 and err == [f"error: --table {table}: its rows were made with other settings ({changed}); "
                                     f"they would be mixed with this run's: give another --table, or add "
                                     f"--overwrite to replace it"]
        assert table.read_bytes() == before
    code, results, _ = run_tag(["--checkpoint", str(other), *files, "--table", str(table), "--overwrite"], capsys)
    assert code == 0 and len(results) == 2 and len(table.read_text().splitlines()) == 3


def test_a_file_changed_since_its_row_was_made_is_refused_on_resume(model, tmp_path, capsys):
    """A resumed table skips the files in it by name: one replaced since (other audio under its name) would keep
    the old file's row, so the run is refused, the table left as it was; --overwrite tags every file again."""
    rng = np.random.default_rng(17)
    folder = tmp_path / "in"
    clips(folder, rng, count=2)
    table = tmp_path / "t.csv"
    argv = ["--checkpoint", model, str(folder), "--table", str(table)]
    assert run_tag(argv, capsys)[0] == 0
    assert run_tag(argv, capsys)[0] == 0   # nothing changed: resumed, nothing tagged again
    before = table.read_bytes()
    soundfile.write(folder / "c1.wav", np.zeros(24_001, np.float32), 16000)   # another recording, the same name
    code, _, err = run_tag(argv, capsys)
    assert code == 2 and err == [f"error: --table {table}: 1 file(s) in it changed since their rows were made (c1.wav); "
                                 f"their rows are not these files' results: give another --table, or add --overwrite "
                                 f"to tag every file again"]
    assert table.read_bytes() == before
    code, results, err = run_tag([*argv, "--overwrite"], capsys)
    assert code == 0 and [r["file"] for r in results] == ["c0.wav", "c1.wav"] and results[1]["silent"], err


def test_a_table_with_events_from_before_the_per_class_settings_resumes(model, tmp_path, capsys):
    """A table made with --events records its event settings; one recorded before the per-class fields existed
    (hysteresis, median, length and gap per class) resumes as the defaults they stand for, while another threshold
    is still refused."""
    from fastsca.events import CLASS_FIELDS

    files = [str(p) for p in clips(tmp_path / "in", np.random.default_rng(23), count=2)]
    table = tmp_path / "t.csv"
    argv = ["--checkpoint", model, "--events", "--table", str(table)]
    assert run_tag([*argv, files[0]], capsys)[0] == 0
    lock = tmp_path / ".t.csv.lock"
    recorded = json.loads(lock.read_text())
    old_form = {k: v for k, v in recorded["events"].items() if k == "class_thresholds" or k not in
                set(CLASS_FIELDS.values())}
    assert old_form != recorded["events"]   # the per-class fields this version added are gone
    lock.write_text(json.dumps({**recorded, "events": old_form}))
    code, results, _ = run_tag([*argv, *files], capsys)
    assert code == 0 and [Path(r["file"]).name for r in results] == [Path(files[1]).name]
    lock.write_text(json.dumps({**recorded, "events": {**old_form, "threshold": 0.9}}))
    code, _, err = run_tag([*argv, *files], capsys)
    assert code == 2 and "its rows were made with other settings (events)" in err[0]
