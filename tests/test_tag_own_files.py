"""`fastsca.tag` never writes over a file it did not write: events files, the report and figures that were there
before (a user's own, or a changed one) are refused with one line and left byte for byte, unless --overwrite; a
--table or --strong that is one of the files the run writes is refused; the run's own files are replaced when
the same command runs again."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_checkpoint import LABELS
from test_faults_tag import model, noise, run_tag, small_figures  # noqa: F401 (fixtures)

SEED = 2611


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def clip(tmp_path) -> str:
    path = tmp_path / "in" / "a.wav"
    path.parent.mkdir()
    soundfile.write(path, noise(np.random.default_rng(SEED), 16000 + 37), 16000)
    return str(path)


@pytest.mark.parametrize("name, options", [("events.tsv", ["--events", "--out", "{out}"]),
                                           ("events.json", ["--events", "--out", "{out}"]),
                                           ("tag-report.txt", ["--table", "{out}/t.csv"])])
def test_a_file_it_did_not_write_in_the_output_folder_is_refused_and_kept(model, clip, tmp_path, name, options,
                                                                          capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("someone's own file\n")
    before = digest(out / name)
    argv = ["--checkpoint", model, clip] + [o.format(out=out) for o in options]
    code, _, err = run_tag(argv, capsys)
    assert code == 2 and err[-1].startswith("error: ") and f"its {name} was not written by fastsca.tag" in err[-1]
    assert digest(out / name) == before
    code, _, _ = run_tag(argv + ["--overwrite"], capsys)
    assert code == 0 and digest(out / name) != before


def test_the_runs_own_files_are_replaced_again_but_not_once_changed(model, clip, tmp_path, capsys):
    argv = ["--checkpoint", model, clip, "--events", "--out", str(tmp_path / "out")]
    assert run_tag(argv, capsys)[0] == 0
    assert run_tag(argv, capsys)[0] == 0   # the same command again: its own files are replaced
    (tmp_path / "out" / "events.tsv").write_text("edited by hand\n")
    code, _, err = run_tag(argv, capsys)
    assert code == 2 and "its events.tsv was not written by fastsca.tag (or was changed since)" in err[-1]
    assert (tmp_path / "out" / "events.tsv").read_text() == "edited by hand\n"


@pytest.mark.parametrize("flag", ["--table", "--strong"])
def test_an_input_or_table_that_is_a_file_the_run_writes_is_refused(model, clip, tmp_path, flag, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "events.tsv"
    target.write_text(f"segment_id\tstart_time_seconds\tend_time_seconds\tlabel\na\t0.1\t0.5\t{LABELS[0]}\n")
    before = digest(target)
    argv = ["--checkpoint", model, clip, "--events", "--out", str(out), flag, str(target), "--overwrite"]
    code, _, err = run_tag(argv, capsys)
    assert code == 2 and err[-1].startswith(f"error: {flag} {target}: is the events.tsv this run writes in --out")
    assert digest(target) == before


def test_a_figure_it_did_not_draw_is_refused_and_kept(model, clip, tmp_path, capsys):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "a.png").write_bytes(b"\x89PNG someone's own figure")
    before = digest(figures / "a.png")
    argv = ["--checkpoint", model, clip, "--plot", f"{figures}/"]
    code, results, err = run_tag(argv, capsys)
    assert code == 2 and len(results) == 1 and "a.png: exists and was not drawn by fastsca.tag" in "\n".join(err)
    assert digest(figures / "a.png") == before
    assert run_tag(argv + ["--overwrite"], capsys)[0] == 0
    assert run_tag(argv, capsys)[0] == 0   # its own figure is replaced again
