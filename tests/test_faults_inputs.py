"""The packer never writes outside --out, mixes inputs or silently drops a row: split values that are paths, one
file named several ways in a manifest, a file listed with other labels or in another fold, a name found in two
folders, a resume with another --audio-dir, hidden and linked class folders, odd file names, and clip lengths
train.run could not train on. Each is refused in one line naming the row, or counted in the summary line and
listed in pack_report.csv."""
import csv
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_manifest import in_process_pool, write_tone  # noqa: F401  (a fixture)
from train.data.out_folder import OutFolderError, RunLock, check_plan
from train.pack import main
from train.data.shards import ShardIndex


def run_pack(capsys, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, the one stderr line that is not a progress bar or a layout line) of the pack command."""
    try:
        main(args)
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    lines = [line.strip() for line in re.split(r"[\r\n]", captured.err)
             if line.strip() and not re.search(r"\d+%\||layout, \d+ rows", line)]
    assert "Traceback" not in captured.err and len(lines) <= 1, captured.err
    return code, captured.out, "".join(lines)


def report_rows(out: Path) -> list[dict]:
    with (out / "pack_report.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def manifest_args(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "m.csv").write_text(text)
    return ["--manifest", str(tmp_path / "m.csv"), "--audio-dir", str(tmp_path / "audio"), "--out",
            str(tmp_path / "out"), "--workers", "1", "--clip-seconds", "0.3"]


@pytest.mark.parametrize("split", ["../../x", "/tmp/abs", "a/b", "..", ".hidden"])
def test_a_split_that_is_a_path_is_refused_naming_the_row(tmp_path, capsys, split):
    write_tone(tmp_path / "audio" / "a.wav", 0.3, 500)
    args = manifest_args(tmp_path, f'file,label,split\na.wav,dog,"{split}"\n')
    code, _, message = run_pack(capsys, args)
    assert code == 2
    assert message == (f"error: {tmp_path / 'm.csv'}:2: split {split!r} is not a folder name (letters, digits, '-', "
                       f"'_', '.'; not starting with '.'): rows are packed into --out/<split>; rename it")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_one_file_named_three_ways_is_packed_once_and_other_labels_merged(tmp_path, capsys, in_process_pool):
    write_tone(tmp_path / "audio" / "x.wav", 0.3, 500)
    write_tone(tmp_path / "audio" / "y.wav", 0.3, 900)
    args = manifest_args(tmp_path, "file,label\nx,dog\nx.wav,dog\n./x.wav,cat\ny.wav,cat\n")
    code, printed, _ = run_pack(capsys, args)
    assert code == 0
    assert "packed 2 clips into 1 shards" in printed and "skipped 2 (1 duplicate, 1 merged)" in printed
    rows = report_rows(tmp_path / "out")
    assert [(r["clip"], r["reason"]) for r in rows[:2]] == [
        ("x.wav", f"duplicate: {tmp_path / 'm.csv'}:3 names the same file as {tmp_path / 'm.csv'}:2"),
        ("x.wav", f"merged: labels cat of {tmp_path / 'm.csv'}:4 added to {tmp_path / 'm.csv'}:2 (the same file)")]
    with h5py.File(tmp_path / "out" / "shard_00000.h5") as handle:
        assert [n.decode() for n in handle["audio_name"][:]] == ["x", "y.wav"]
        np.testing.assert_array_equal(handle["target"][:], [[1, 1], [1, 0]])   # columns: cat, dog


def test_one_file_in_two_folds_is_refused_naming_both_rows(tmp_path, capsys):
    write_tone(tmp_path / "audio" / "x.wav", 0.3, 500)
    args = manifest_args(tmp_path, "file,label,fold\nx.wav,dog,1\n./x.wav,dog,2\n")
    code, _, message = run_pack(capsys, args)
    assert code == 2 and message == (f"error: {tmp_path / 'm.csv'}:3: 'x.wav' is the file of {tmp_path / 'm.csv'}:2 "
                                     f"again, in another fold, split or group; list each file once")


def test_a_name_in_two_folders_is_reported_not_taken_from_one(tmp_path, capsys, in_process_pool):
    write_tone(tmp_path / "audio" / "a" / "x.wav", 0.3, 500)
    write_tone(tmp_path / "audio" / "b" / "x.wav", 0.3, 900)
    write_tone(tmp_path / "audio" / "a" / "y.wav", 0.3, 700)
    args = manifest_args(tmp_path, "file,label\nx.wav,dog\ny.wav,dog\nb/x.wav,cat\n")
    code, printed, _ = run_pack(capsys, args)
    assert code == 0 and "packed 2 clips" in printed and "skipped 1 (1 ambiguous)" in printed
    assert report_rows(tmp_path / "out")[0]["reason"] == ("ambiguous: 'x.wav' is found in 2 places under --audio-dir "
                                                          "(a/x.wav, b/x.wav); give its path relative to --audio-dir")


def test_hidden_folders_are_not_classes_and_a_link_loop_packs_nothing_twice(tmp_path, capsys, in_process_pool):
    audio = tmp_path / "audio"
    write_tone(audio / "dog" / "a.wav", 0.3, 500)
    write_tone(audio / "cat" / "b.wav", 0.3, 900)
    write_tone(audio / "__MACOSX" / "dog" / "._a.wav", 0.3, 500)
    write_tone(audio / ".cache" / "c.wav", 0.3, 500)
    write_tone(audio / "dog" / "._d.wav", 0.3, 500)
    (audio / "dog" / "loop").symlink_to(audio, target_is_directory=True)     # a loop back to --audio-dir
    (audio / "cat" / "dogs").symlink_to(audio / "dog", target_is_directory=True)
    code, printed, _ = run_pack(capsys, ["--audio-dir", str(audio), "--out", str(tmp_path / "out"), "--workers", "1",
                                         "--clip-seconds", "0.3"])
    assert code == 0 and "packed 2 clips" in printed and "skipped 5 (3 hidden, 2 linked)" in printed
    assert ShardIndex.open(tmp_path / "out").label_names == ("cat", "dog")
    assert sorted((r["clip"], r["reason"].split(":")[0]) for r in report_rows(tmp_path / "out")[:5]) == [
        (".cache", "hidden"), ("__MACOSX", "hidden"), ("cat/dogs", "linked"), ("dog/._d.wav", "hidden"),
        ("dog/loop", "linked")]


@pytest.mark.parametrize("name", ["with space.wav", "tab\there.wav", "new\nline.wav", "comma,s.wav",
                                  "\u00e9t\u00e9 \u97f3.wav", 'quote".wav'])
def test_odd_file_names_pack_and_report(tmp_path, capsys, in_process_pool, name):
    write_tone(tmp_path / "audio" / "dog" / name, 0.3, 500)
    code, printed, _ = run_pack(capsys, ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                                         "--workers", "1", "--clip-seconds", "0.3"])
    assert code == 0 and "packed 1 clips" in printed
    assert [(r["clip"], r["cut"]) for r in report_rows(tmp_path / "out")] == [(f"dog/{name}", "whole file")]


def test_a_clip_length_train_run_refuses_is_refused_by_pack(tmp_path, capsys):
    write_tone(tmp_path / "audio" / "dog" / "a.wav", 0.3, 500)
    code, _, message = run_pack(capsys, ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                                         "--clip-seconds", "1.03"])
    assert code == 2 and message == (
        "error: --clip-seconds 1.03: train.run could not train on these clips (block 1: a 2x2 max-pool does not "
        "divide its 41x64 input map; choose input_frames/n_mels divisible by the pooling plan); give a multiple of "
        "0.1 s, e.g. 1 or 1.1")
    assert not (tmp_path / "out").exists()


def test_a_resume_with_another_audio_dir_is_refused_then_overwritten(tmp_path, capsys, in_process_pool):
    for folder, hz in (("one", 500), ("two", 900)):
        write_tone(tmp_path / folder / "dog" / "a.wav", 0.3, hz)
    args = ["--out", str(tmp_path / "out"), "--workers", "1", "--clip-seconds", "0.3"]
    assert run_pack(capsys, ["--audio-dir", str(tmp_path / "one"), *args])[0] == 0
    code, _, message = run_pack(capsys, ["--audio-dir", str(tmp_path / "two"), *args])
    assert code == 2 and message == (f"error: {tmp_path / 'out'} holds shards made from other inputs or settings; use "
                                     f"a new --out folder, or --overwrite to replace them")
    assert run_pack(capsys, ["--audio-dir", str(tmp_path / "two"), *args, "--overwrite"])[0] == 0
    with h5py.File(tmp_path / "out" / "shard_00000.h5") as handle:
        spectrum = np.abs(np.fft.rfft(handle["waveform"][0]))
    assert np.fft.rfftfreq(4800, 1 / 16000)[spectrum.argmax()] == pytest.approx(900, abs=4)


def test_shards_another_command_left_are_not_mixed_in(tmp_path, capsys):
    write_tone(tmp_path / "audio" / "dog" / "a.wav", 0.3, 500)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shard_00000.h5").write_bytes(b"someone else's")
    code, _, message = run_pack(capsys, ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                                         "--clip-seconds", "0.3"])
    assert code == 2 and message == (f"error: {tmp_path / 'out'} holds shards made from another command (no "
                                     f"pack_plan.json); use a new --out folder, or --overwrite to replace them")
    assert (tmp_path / "out" / "shard_00000.h5").read_bytes() == b"someone else's"


def test_a_second_packer_on_one_out_is_one_line(tmp_path, capsys):
    write_tone(tmp_path / "audio" / "dog" / "a.wav", 0.3, 500)
    with RunLock(tmp_path / "out", what="train.pack run"):   # this process plays the first packer
        code, _, message = run_pack(capsys, ["--audio-dir", str(tmp_path / "audio"), "--out", str(tmp_path / "out"),
                                             "--clip-seconds", "0.3"])
    assert code == 2 and message == (f"error: {tmp_path / 'out'} is in use by another train.pack run (PID "
                                     f"{os.getpid()}); wait for it to end, stop it, or choose another --out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock"]


def test_an_input_that_is_an_output_is_refused(tmp_path, capsys):
    write_tone(tmp_path / "audio" / "a.wav", 0.3, 500)
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "out" / "pack_report.csv"                     # the report would overwrite it
    manifest.write_text("file,label\na.wav,dog\n")
    code, _, message = run_pack(capsys, ["--manifest", str(manifest), "--audio-dir", str(tmp_path / "audio"),
                                         "--out", str(tmp_path / "out"), "--clip-seconds", "0.3"])
    assert code == 2 and message == (f"error: --manifest {manifest} is a file this command writes in --out "
                                     f"{tmp_path / 'out'}; move it or choose another --out")
    assert manifest.read_text() == "file,label\na.wav,dog\n"


def test_other_splits_are_refused_and_overwrite_empties_the_old_split_folders(tmp_path, capsys, in_process_pool):
    write_tone(tmp_path / "audio" / "a.wav", 0.3, 500)
    write_tone(tmp_path / "audio" / "b.wav", 0.3, 900)
    args = manifest_args(tmp_path, "file,label,split\na.wav,dog,train\nb.wav,cat,val\n")
    assert run_pack(capsys, args)[0] == 0
    (tmp_path / "m.csv").write_text("file,label,split\na.wav,dog,train\nb.wav,cat,test\n")
    code, _, message = run_pack(capsys, args)
    assert code == 2 and message.startswith(f"error: {tmp_path / 'out'} holds shards made from other inputs")
    assert run_pack(capsys, [*args, "--overwrite"])[0] == 0
    assert sorted(p.name for p in (tmp_path / "out" / "val").iterdir()) == []        # no old shards left to read
    assert ShardIndex.open(tmp_path / "out" / "test").num_clips == 1


@pytest.mark.parametrize("damaged", ["", "mine\n", "[1, 2]\n", "\udcff"])
def test_a_damaged_plan_file_is_another_plan_one_line(tmp_path, damaged):
    """A plan file that is empty, not JSON, not an object or not UTF-8 is someone else's plan: refused in the
    usual line (never a JSON parser's message), replaced with --overwrite."""
    (tmp_path / "pack_plan.json").write_bytes(damaged.encode(errors="surrogateescape"))
    with pytest.raises(OutFolderError, match=rf"^{tmp_path} holds shards made from other inputs or settings; use a "
                                             rf"new --out folder, or --overwrite to replace them$"):
        check_plan(tmp_path, "pack_plan.json", {"rows": 3})
    check_plan(tmp_path, "pack_plan.json", {"rows": 3}, overwrite=True)
    check_plan(tmp_path, "pack_plan.json", {"rows": 3})   # now its own plan: resumed
