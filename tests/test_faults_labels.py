"""Label and strong-label files as careless users give them, and the faults they used to cause downstream.

- The family sweep: each layout a spreadsheet, an editor or another tool writes (commas, semicolons, a decimal
  comma, header variants and extra columns, Windows line ends, a BOM, UTF-16, gzip, duplicate lines) reads to
  the same labels; what cannot be read (an empty file, NaN times, too many columns) is one clear line.
- Strong labels are cleaned wherever they are read: a clip's overlapping or touching events of one class merged,
  events cut to the clip, empty ones dropped, labels that are no class counted (with an example).
- Downstream: a training run with such labels in its shards trains on, a scoring fault is reported and never
  ends a run, a split where no class can be scored still gets best.pt and a metrics.jsonl without NaN, only
  clips with strong labels are scored, and `train.pack` / `train.evaluate` say which ids match no clip.
"""
import codecs
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

import train.run
from fastsca.events import ReferenceReport, clean_events, read_reference
from train import checkpoint, evaluate, localisation, pack
from train.data.csv_meta import MetadataError, read_labels, read_segments, read_strong
from train.data.shards import ShardWriter

from test_checkpoint import LABELS, tiny_config, tiny_payload
from test_faults import one_line

MIDS = {"a": "/m/a", "b": "/m/b", "c": "/t/c"}
HEADER = ["segment_id", "start_time_seconds", "end_time_seconds", "label"]


def random_events(rng) -> list[tuple[str, float, float, str]]:
    """Strong labels of three clips on a millisecond grid, never two of one class touching in a clip."""
    rows = []
    for clip in ("abc_30000", "d-e_f_0", "xyz_10000"):
        for k, mid in enumerate(MIDS.values()):
            onset = round(k * 3 + rng.uniform(0, 1), 3)
            rows.append((clip, onset, round(onset + rng.uniform(0.1, 2.5), 3), mid))
    return rows


def expected(rows) -> dict:
    """What reading `rows` gives: (onset, offset, mid) by clip, sorted by onset."""
    return {clip: sorted([(on, off, mid) for c, on, off, mid in rows if c == clip], key=lambda e: (e[0], e[2]))
            for clip in dict.fromkeys(c for c, *_ in rows)}


def table(rows, header=HEADER, delimiter="\t", decimal=".", end="\n", columns=(0, 1, 2, 3), extra=()) -> str:
    """Rows written as a tool would: any delimiter, decimal mark, line end and column order, `extra` fields
    after the four."""
    def time(value: float) -> str:
        return f"{value:g}".replace(".", decimal)
    lines = [delimiter.join(header[i] for i in columns)] if header else []
    for clip, onset, offset, mid in rows:
        fields = [clip, time(onset), time(offset), mid, *extra]
        lines.append(delimiter.join(fields[i] for i in columns))
    return end.join(lines) + end


LAYOUTS = {
    "tab": lambda rows: table(rows).encode(),
    "no header": lambda rows: table(rows, header=None).encode(),
    "commas": lambda rows: table(rows, delimiter=",").encode(),
    "quoted commas": lambda rows: table([(f'"{c}"', on, off, f'"{m}"') for c, on, off, m in rows],
                                        delimiter=", ").encode(),
    "semicolons, decimal comma": lambda rows: table(rows, delimiter=";", decimal=",").encode(),
    "tabs, decimal comma": lambda rows: table(rows, decimal=",").encode(),
    "DCASE header, capitalised": lambda rows: table(rows, header=["Filename", "Onset", "Offset",
                                                                  "Event_Label"]).encode(),
    "commented header": lambda rows: ("# " + table(rows)).encode(),
    "other column order, extra columns": lambda rows: table(rows, header=[*HEADER, "confidence"],
                                                            columns=(4, 3, 0, 2, 1), extra=("0.9",)).encode(),
    "windows line ends": lambda rows: table(rows, end="\r\n").encode(),
    "utf-8 BOM": lambda rows: codecs.BOM_UTF8 + table(rows).encode(),
    "utf-16": lambda rows: table(rows).encode("utf-16"),
    "gzip": lambda rows: gzip.compress(table(rows).encode()),
    "blank lines and spaces": lambda rows: ("\n\n" + table(rows).replace("\t", " \t ") + "\n  \n").encode(),
    "spaces between fields": lambda rows: table(rows, delimiter="  ").encode(),
    "DCASE, a clip without events": lambda rows: table(rows, header=["filename", "onset", "offset", "event_label"])
                                                 .replace("\n", "\nempty.wav\t\t\t\n", 1).encode(),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_strong_label_layout_reads_the_same(tmp_path, layout):
    rows = random_events(np.random.default_rng(88))
    path = tmp_path / "strong.tsv"
    path.write_bytes(LAYOUTS[layout](rows))
    assert read_strong(path) == expected(rows)
    names = {mid: name for name, mid in MIDS.items()}
    assert read_reference(path, tuple(MIDS), MIDS) == {
        clip: [(on, off, names[mid]) for on, off, mid in events] for clip, events in expected(rows).items()}


def test_duplicate_lines_are_merged_and_counted(tmp_path):
    rng = np.random.default_rng(98)
    rows = random_events(rng)
    repeated = [rows[i] for i in rng.choice(len(rows), size=4, replace=False)]
    (tmp_path / "strong.tsv").write_text(table(rows + repeated))
    report = ReferenceReport()
    assert read_strong(tmp_path / "strong.tsv", report=report) == expected(rows)
    assert report.merged == 4 and report.describe() == "4 overlapping, touching or repeated same-class event(s) merged"


@pytest.mark.parametrize("text, message", [
    ("", r"strong\.tsv: no events found \(the file is empty\)"),
    ("\n  \n", r"strong\.tsv: no events found \(the file is empty\)"),
    ("\t".join(HEADER) + "\n", r"strong\.tsv: no events found, only a header or clips without events"),
    ("abc_0\t1.0\t2.0\t/m/a\t0.9\n", r"strong\.tsv:1: expected 4 tab-separated fields .* got 5; a file with more "
                                      r"columns needs a header row naming them"),
    ("abc_0,1,5,2,5,/m/a\n", r"strong\.tsv:1: expected 4 comma-separated fields .* got 6; .*times with a decimal "
                             r"comma need tabs or semicolons between the fields"),
    ("abc_0\tnan\t2.0\t/m/a\n", r"strong\.tsv:1: time 'nan' is not a finite number"),
    ("abc_0\t1.0\tinf\t/m/a\n", r"strong\.tsv:1: time 'inf' is not a finite number"),
    ("abc_0\t1.0\t2.0\t/m/a\nabc_0\t1.0\t-inf\t/m/a\n", r"strong\.tsv:2: time '-inf' is not a finite number"),
    ("abc_0\t1.0\tsoon\t/m/a\n", r"strong\.tsv:1: time 'soon' is not a number"),
    ("abc_0\t2.0\t1.0\t/m/a\n", r"strong\.tsv:1: offset 1.0 is before onset 2.0"),
    ("clip\tfrom\tto\twhat\nabc_0\t1\t2\t/m/a\n", r"strong\.tsv:1: neither an event \(id, onset, offset, label\) nor "
                                                  r"a header"),
])
def test_unreadable_strong_labels_are_one_line(tmp_path, text, message):
    path = tmp_path / "strong.tsv"
    path.write_text(text)
    for read in (read_strong, lambda p: read_reference(p, tuple(MIDS), MIDS)):
        with pytest.raises(ValueError) as raised:
            read(path)
        assert re.search(message, one_line(str(raised.value))), raised.value


def test_strong_labels_in_latin_1_are_one_line(tmp_path):
    (tmp_path / "strong.tsv").write_bytes("abc_0\t1.0\t2.0\tCaf\u00e9\n".encode("latin-1"))
    with pytest.raises(MetadataError, match=r"strong\.tsv:1: not UTF-8 text .*save the file as UTF-8"):
        read_strong(tmp_path / "strong.tsv")


@pytest.mark.parametrize("events, clean, counts", [
    ([(0.5, 2.0, "a"), (1.5, 3.0, "a")], [(0.5, 3.0, "a")], {"merged": 1}),                 # overlapping
    ([(0.5, 2.0, "a"), (2.0, 3.0, "a")], [(0.5, 3.0, "a")], {"merged": 1}),                 # touching
    ([(0.5, 4.0, "a"), (1.0, 2.0, "a")], [(0.5, 4.0, "a")], {"merged": 1}),                 # nested
    ([(0.5, 2.0, "a"), (1.5, 3.0, "b")], [(0.5, 2.0, "a"), (1.5, 3.0, "b")], {}),           # two classes
    ([(-0.5, 2.0, "a")], [(0.0, 2.0, "a")], {"clipped": 1}),                                # negative onset
    ([(8.0, 12.5, "a")], [(8.0, 10.0, "a")], {"clipped": 1}),                               # past the end
    ([(3.0, 3.0, "a"), (1.0, 2.0, "b")], [(1.0, 2.0, "b")], {"empty": 1}),                  # onset = offset
    ([(10.5, 11.0, "a"), (-2.0, -1.0, "b")], [], {"empty": 2}),                             # outside the clip
])
def test_events_are_cut_to_the_clip_and_merged(events, clean, counts):
    report = ReferenceReport()
    assert clean_events(events, 10.0, report) == clean
    assert {k: v for k, v in vars(report).items() if v and k != "unknown_example"} == counts


LABEL_ROWS = [("0", "/m/a", "Speech"), ("1", "/m/b", "Male speech, man speaking"), ("2", "/t/c", "Dog")]


def label_file(header=("index", "mid", "display_name"), delimiter=",", end="\n", extra=False) -> str:
    def row(fields):
        fields = [f'"{f}"' if delimiter in f else f for f in fields]
        return delimiter.join([*fields, "7"] if extra else fields)
    return end.join(([row(header)] if header else []) + [row(r) for r in LABEL_ROWS]) + end


LABEL_LAYOUTS = {
    "plain": lambda: label_file().encode(),
    "no header": lambda: label_file(header=None).encode(),
    "tabs": lambda: label_file(delimiter="\t").encode(),
    "capitalised header": lambda: label_file(header=("Index", "MID", "Display Name")).encode(),
    "extra column": lambda: label_file(header=("index", "mid", "display_name", "count"), extra=True).encode(),
    "windows line ends": lambda: label_file(end="\r\n").encode(),
    "utf-8 BOM": lambda: codecs.BOM_UTF8 + label_file().encode(),
    "utf-16": lambda: label_file().encode("utf-16"),
    "gzip": lambda: gzip.compress(label_file().encode()),
}


@pytest.mark.parametrize("layout", LABEL_LAYOUTS)
def test_every_label_list_layout_reads_the_same(tmp_path, layout):
    (tmp_path / "labels.csv").write_bytes(LABEL_LAYOUTS[layout]())
    labels = read_labels(tmp_path / "labels.csv")
    assert labels.mids == ("/m/a", "/m/b", "/t/c") and labels.names == ("Speech", "Male speech, man speaking", "Dog")


@pytest.mark.parametrize("text, message", [
    ("", r"labels\.csv: no labels found"),
    (label_file() + "2,/t/c,Dog\n", r"labels\.csv:5: expected index 3, got '2' \(line 5 repeats class '/t/c'\)"),
    (label_file(header=None, extra=True), r"labels\.csv:1: expected index,mid,display_name, got 4 fields; a file "
                                          r"with more columns needs the header row"),
])
def test_unreadable_label_lists_are_one_line(tmp_path, text, message):
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(MetadataError) as raised:
        read_labels(tmp_path / "labels.csv")
    assert re.search(message, one_line(str(raised.value))), raised.value


SEGMENTS = [("--PJHxphWEs", "30.000", "40.000", "/m/a,/t/c"), ("abc_def-123", "0.000", "10.000", "/m/b")]


@pytest.mark.parametrize("delimiter, end, encode", [
    (", ", "\n", str.encode), ("\t", "\n", str.encode), (",", "\r\n", str.encode),
    (",", "\n", lambda text: codecs.BOM_UTF8 + text.encode()), (",", "\n", lambda text: text.encode("utf-16")),
    (",", "\n", lambda text: gzip.compress(text.encode())),
])
def test_segment_csv_layouts_read_the_same(tmp_path, delimiter, end, encode):
    (tmp_path / "labels.csv").write_text(label_file())
    labels = read_labels(tmp_path / "labels.csv")
    rows = [delimiter.join(["ytid", "start_seconds", "end_seconds", "positive_labels"])]
    rows += [delimiter.join([y, s, e, f'"{m}"' if delimiter != "\t" else m]) for y, s, e, m in SEGMENTS]
    (tmp_path / "segments.csv").write_bytes(encode(end.join(rows) + end))
    segments = read_segments(tmp_path / "segments.csv", labels)
    assert [(s.ytid, s.start, s.end, s.labels) for s in segments] == [
        ("--PJHxphWEs", 30.0, 40.0, ("/m/a", "/t/c")), ("abc_def-123", 0.0, 10.0, ("/m/b",))]


# --- train.pack --strong ------------------------------------------------------------------------------------------

@pytest.fixture
def pack_inputs(tmp_path):
    (tmp_path / "labels.csv").write_text(label_file())
    labels = read_labels(tmp_path / "labels.csv")
    (tmp_path / "segments.csv").write_text("".join(f'{y}, {s}, {e}, "{m}"\n' for y, s, e, m in SEGMENTS))
    return labels, read_segments(tmp_path / "segments.csv", labels)


def strong_config(tmp_path, text: str) -> pack.PackConfig:
    (tmp_path / "strong.tsv").write_text(text)
    return pack.PackConfig((tmp_path / "segments.csv",), tmp_path / "labels.csv", tmp_path / "clips",
                           tmp_path / "out", strong=(tmp_path / "strong.tsv",))


def test_pack_reports_what_it_changed_in_the_strong_labels(tmp_path, pack_inputs, capsys):
    onset = round(float(np.random.default_rng(233).uniform(0.1, 2.0)), 3)
    config = strong_config(tmp_path, "\t".join(HEADER) + "\n" + "".join(f"{r}\n" for r in [
        f"--PJHxphWEs_30000\t{onset}\t{onset + 2}\t/m/a", f"--PJHxphWEs_30000\t{onset + 1}\t{onset + 3}\t/m/a",
        "--PJHxphWEs_30000\t-1.5\t1\t/t/c", "--PJHxphWEs_30000\t9\t12\t/m/zzz",
        "abc_def-123_0\t4\t4\t/m/b", "abc_def-123_0\t5\t6\t/m/b", "Yother_0\t1\t2\t/m/b"]))
    strong = pack.read_strong_labels(config, *pack_inputs)
    assert strong == {"--PJHxphWEs_30000": [(0.0, 1.0, "/t/c"), (onset, onset + 3, "/m/a")],
                      "abc_def-123_0": [(5.0, 6.0, "/m/b")]}
    assert one_line(capsys.readouterr().err) == (
        f"strong labels {tmp_path / 'strong.tsv'}: 2 clips matched; 1 event(s) with a label that is not a class "
        f"dropped (e.g. '/m/zzz'); 1 overlapping, touching or repeated same-class event(s) merged; 2 event(s) cut "
        f"to the clip (negative onset or offset past its end); 1 empty event(s) dropped (onset = offset, or outside "
        f"the clip); 1 clip id(s) match no clip (e.g. 'Yother_0') (ids are <YTID>_<start ms> of the CSV rows, e.g. "
        f"'--PJHxphWEs_30000')")


@pytest.mark.parametrize("ids, hint", [
    (["Y--PJHxphWEs_30000", "Yabc_def-123_0"], "strip the 'Y' prefix: ids are <YTID>_<start ms>, e.g. "
                                               "'--PJHxphWEs_30000'"),
    (["--PJHxphWEs", "abc_def-123"], "ids are <YTID>_<start in ms>: the CSV row --PJHxphWEs, 30 is "
                                     "'--PJHxphWEs_30000'"),
    (["--PJHxphWEs_0"], "ids are <YTID>_<start in ms>: the CSV row --PJHxphWEs, 30 is '--PJHxphWEs_30000'"),
])
def test_pack_refuses_strong_labels_that_match_no_clip(tmp_path, pack_inputs, ids, hint, capsys):
    config = strong_config(tmp_path, "".join(f"{clip}\t1\t2\t/m/a\n" for clip in ids))
    with pytest.raises(MetadataError) as raised:
        pack.read_strong_labels(config, *pack_inputs)
    assert str(raised.value) == (f"--strong {tmp_path / 'strong.tsv'}: none of its {len(ids)} clip ids matches a "
                                 f"segment of the CSVs (e.g. {ids[0]!r}); {hint}")
    with pytest.raises(SystemExit) as stopped:   # before any audio is looked for
        pack.main(["--csv", str(tmp_path / "segments.csv"), "--labels", str(tmp_path / "labels.csv"), "--audio-dir",
                   str(tmp_path / "clips"), "--out", str(tmp_path / "out"), "--strong", str(tmp_path / "strong.tsv")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {raised.value}"


# --- scoring: only clips with strong labels, whatever the library thinks of the events ----------------------------

def strong_split(path: Path, clips: int, labelled: list[int], overlapping: bool = True, single_label: bool = True,
                 classes: int = 3) -> Path:
    """A shard of random 1 s clips, one positive class each; clips `labelled` get strong labels: two events of
    their class that overlap (as a careless annotation, or a pack before the merge, stores them)."""
    rng = np.random.default_rng(275)
    names = LABELS[:classes]
    target = np.eye(classes, dtype=np.uint8)[np.arange(clips) % classes]
    if not single_label:
        target[::2, 0] = 1
    events = [(i, 0.1, 0.5, int(target[i].argmax())) for i in labelled]
    events += [(i, 0.4 if overlapping else 0.6, 0.8, int(target[i].argmax())) for i in labelled]
    with ShardWriter(path, tuple(f"/x/{n}" for n in names), names, 16000, 16000, has_strong=True) as writer:
        writer.add(rng.integers(-3000, 3000, (clips, 16000)).astype(np.int16), target,
                   [f"Yclip{i}_x" for i in range(clips)], events)
        writer.commit()
    return path


def test_only_clips_with_strong_labels_are_scored(tmp_path):
    rng = np.random.default_rng(290)
    labelled = sorted(rng.choice(27, size=1, replace=False).tolist())
    names, reference = localisation.split_reference(strong_split(tmp_path / "s.h5", 27, labelled))
    assert len(names) == 27 and list(reference) == [names[i] for i in labelled]
    assert reference[names[labelled[0]]] == [(pytest.approx(0.1), pytest.approx(0.8), LABELS[labelled[0] % 3])]
    probs = rng.uniform(0, 1, (27, 10, 3)).astype(np.float32)
    scored = localisation.localisation_metrics(probs, names, reference, LABELS[:3], 0.1)
    assert (scored.clips, scored.split_clips) == (1, 27)
    assert localisation.format_table(scored).splitlines()[-1] == ("strong clips      1 of 27 (only clips with "
                                                                  "strong labels are scored)")
    assert localisation.progress_text({"event_f1": 0.5, "psds1": 0.25, "localisation_clips": 1}, 27) == (
        "  event F1 0.500  PSDS1 0.250 (on the 1 of 27 clips with strong labels)")


def test_overlapping_reference_events_are_scored_not_refused():
    rng = np.random.default_rng(305)
    start = int(rng.integers(1, 4))   # in frames: times on the 0.1 s grid as the scoring computes them
    reference = {"c0": [(start / 10, (start + 4) / 10, "a"), ((start + 4) / 10, (start + 8) / 10, "a")],   # touching
                 "c1": [(0.0, 0.6, "b"), (0.3, 0.9, "b"), (0.2, 0.5, "a")]}                            # overlapping
    probs = np.zeros((2, 12, 2), np.float32) + rng.uniform(0, 0.05, (2, 12, 2)).astype(np.float32)
    probs[0, start:start + 8, 0] = 0.95
    probs[1, 0:9, 1] = probs[1, 2:5, 0] = 0.95
    perfect = localisation.localisation_metrics(probs, ["c0", "c1"], reference, ("a", "b"), 0.1)
    assert perfect.summary() == pytest.approx({"event_f1": 1.0, "segment_f1": 1.0, "psds1": 1.0, "psds2": 1.0,
                                               "frame_ap": 1.0})


# --- train.run: a fault in scoring or in the labels never costs the run -------------------------------------------

def run_args(tmp_path: Path, split: Path, out: str, steps: int = 4) -> list[str]:
    return ["--profile", "cpu", "--channels", "4,4,8,8,8,8,8", "--data", str(split), "--eval-data", str(split),
            "--batch-size", "8", "--steps", str(steps), "--eval-every", "2", "--warmup-steps", "1", "--log-every", "2",
            "--num-workers", "0", "--validation-fraction", "0.25", "--out", str(tmp_path / out)]


def jsonl(path: Path) -> list[dict]:
    """metrics.jsonl read strictly: a NaN or infinity (which JSON does not have) fails the test."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_run_on_overlapping_strong_labels_scores_them_and_reports_accuracy(tmp_path, capsys):
    split = strong_split(tmp_path / "train.h5", 32, list(range(32)))
    train.run.main(run_args(tmp_path, split, "out"))
    captured = capsys.readouterr()
    records = [r for r in jsonl(tmp_path / "out" / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in records] == [2, 4]
    assert all({"event_f1", "psds1"} <= set(r) and r["localisation_clips"] == 8 for r in records)
    # every clip has one class: top-1 accuracy beside mAP, in the record and the printed line
    assert all(r["accuracy"] in {k / 8 for k in range(9)} for r in records)
    line = (f"step 4: validation mAP {records[1]['mAP']:.4f}  mAUC {records[1]['mAUC']:.4f}  d' "
            f"{records[1]['d_prime']:.3f}  accuracy {records[1]['accuracy']:.4f}  event F1")
    assert line in captured.err + captured.out
    assert (tmp_path / "out" / "best.pt").exists()


def test_a_scoring_fault_is_reported_and_training_goes_on(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("Connected/overlapping a events found for clip Yclip0_x")

    monkeypatch.setattr(localisation, "localisation_metrics", refuse)
    train.run.main(run_args(tmp_path, strong_split(tmp_path / "train.h5", 32, list(range(32))), "out"))
    err = capsys.readouterr().err.replace("\x1b[A", "")
    assert "Traceback" not in err, err
    fault = "localisation not scored (AssertionError: Connected/overlapping a events found for clip Yclip0_x)"
    # said once while training (both evaluations fail alike), and once for the test split at the end
    assert [line.strip() for line in re.split(r"[\r\n]", err) if line.startswith("warning") or
            line.strip().startswith("warning")] == [f"warning: {fault}; training goes on", f"warning: test split: {fault}"]
    records = jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["localisation_error"] for r in records if r["kind"] == "val"] == [
        "localisation not scored (AssertionError: Connected/overlapping a events found for clip Yclip0_x)"] * 2
    assert [r["kind"] for r in records][-1] == "test"
    assert (tmp_path / "out" / "best.pt").exists() and (tmp_path / "out" / "latest.pt").exists()


def test_no_scorable_class_still_writes_best_pt_and_no_nan(tmp_path, capsys):
    rng = np.random.default_rng(367)
    with ShardWriter(tmp_path / "train.h5", ("/x/a",), ("a",), 16000, 16000) as writer:   # every clip positive
        writer.add(rng.integers(-3000, 3000, (32, 16000)).astype(np.int16), np.ones((32, 1), np.uint8),
                   [f"c{i}" for i in range(32)])
        writer.commit()
    train.run.main(run_args(tmp_path, tmp_path / "train.h5", "out"))
    captured = capsys.readouterr()
    records = jsonl(tmp_path / "out" / "metrics.jsonl")
    evaluations = [r for r in records if r["kind"] in ("val", "test")]
    assert [(r["mAP"], r["mAUC"], r["d_prime"], r["excluded_classes"]) for r in evaluations] == [
        (None, None, None, 1)] * 3
    assert "accuracy" not in evaluations[0]   # one class: nothing to rank
    assert records[-1]["best_step"] == 4 and records[-1]["validation_mAP"] is None
    assert checkpoint.read_checkpoint(tmp_path / "out" / "best.pt")["step"] == 4
    assert captured.err.count("note: no validation class has both a positive and a negative clip (1 class(es)), so "
                              "mAP is undefined; best.pt is the latest evaluation's model") == 1
    assert "step 2: validation mAP -  mAUC -  d' -  (1 class not scored: no positive or no negative clip)" in \
        captured.err + captured.out
    assert "best.pt (the latest evaluation: no validation class could be scored)" in captured.out


# --- train.evaluate: the clip metrics first, whatever localisation does -------------------------------------------

@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "run" / "latest.pt"
    path.parent.mkdir()
    checkpoint.save(path, tiny_payload(tiny_config()))
    return path


@pytest.mark.parametrize("ids, message", [
    (["nowhere_0"], "localisation not scored: --strong {tsv}: none of its ids matches a clip of {split} "
                    "(e.g. 'nowhere_0'; clips are named like 'Yclip0_x'"),
])
def test_evaluate_prints_clip_metrics_when_localisation_fails(tmp_path, tiny_checkpoint, ids, message, capsys):
    split = strong_split(tmp_path / "eval.h5", 10, [], classes=5)
    tsv = tmp_path / "strong.tsv"
    tsv.write_text("".join(f"{clip}\t0.1\t0.5\ta\n" for clip in ids))
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(split), "--strong", str(tsv),
                       "--num-workers", "0"])
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert one_line(captured.err).startswith("error: " + message.format(tsv=tsv, split=split))
    assert "mAP     " in captured.out and "accuracy          " in captured.out   # 10 clips, one class each
    assert (tiny_checkpoint.parent / "per_class_metrics.csv").exists()


def test_evaluate_scores_y_prefixed_ids_and_reports_unknown_labels(tmp_path, tiny_checkpoint, capsys):
    split = strong_split(tmp_path / "eval.h5", 10, [], classes=5)
    tsv = tmp_path / "strong.tsv"
    tsv.write_text("Yclip0_x_30000\t0.1\t0.5\ta\nYclip0_x_30000\t0.3\t0.9\ta\nclip1_x_0\t0.2\t0.4\t/m/zzz\n"
                   "clip3_x_0\t0.2\t0.6\td\n")
    evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(split), "--strong", str(tsv),
                   "--num-workers", "0"])
    captured = capsys.readouterr()
    assert one_line(captured.err) == (f"note: strong labels {tsv}: 1 event(s) with a label that is not a class dropped "
                                      f"(e.g. '/m/zzz'); 1 overlapping, touching or repeated same-class event(s) "
                                      f"merged")
    assert "strong clips      2 of 10 (only clips with strong labels are scored)" in captured.out
