"""AudioSet metadata: the real label list and segment CSVs, both CSV layouts, and one-line errors."""
from pathlib import Path

import pytest

from train.data.csv_meta import LabelSet, MetadataError, read_labels, read_segments, read_strong

AUDIOSET = Path(__file__).parents[2] / "shared" / "audioset"
needs_audioset = pytest.mark.skipif(not (AUDIOSET / "eval_segments.csv").exists(),
                                    reason=f"AudioSet metadata not found at {AUDIOSET}")

LABELS = 'index,mid,display_name\n0,/m/a,"Speech"\n1,/m/b,"Male speech, man speaking"\n2,/t/c,"Dog"\n'
GOOGLE = ("# Segments csv created Sun Mar  5 10:54:25 2017\n# num_ytids=2, num_segs=2\n"
          "# YTID, start_seconds, end_seconds, positive_labels\n"
          '--PJHxphWEs, 30.000, 40.000, "/m/a,/t/c"\nabc_def-123, 0.000, 10.000, "/m/b"\n')


@pytest.fixture
def labels(tmp_path) -> LabelSet:
    (tmp_path / "labels.csv").write_text(LABELS)
    return read_labels(tmp_path / "labels.csv")


@needs_audioset
def test_real_audioset_files():
    labels = read_labels(AUDIOSET / "class_labels_indices.csv")
    assert len(labels.mids) == 527 and labels.names[0] == "Speech" and labels.mids[0] == "/m/09x0r"
    assert labels.names[1] == "Male speech, man speaking"
    evaluation = read_segments(AUDIOSET / "eval_segments.csv", labels)
    assert len(evaluation) == 20371
    assert evaluation[0].ytid == "--4gqARaEJE"
    assert evaluation[0].labels == ("/m/068hy", "/m/07q6cd_", "/m/0bt9lr", "/m/0jbk")
    assert all(0 < seg.end - seg.start <= 10.0 for seg in evaluation)          # a few videos end early
    assert len(read_segments(AUDIOSET / "balanced_train_segments.csv", labels)) == 22160


def test_google_and_plain_layouts_agree(tmp_path, labels):
    (tmp_path / "google.csv").write_text(GOOGLE)
    (tmp_path / "plain.csv").write_text('YTID,start_seconds,end_seconds,positive_labels\n'
                                        '--PJHxphWEs,30,40,"/m/a,/t/c"\nabc_def-123,0,10,/m/b\n')
    google = read_segments(tmp_path / "google.csv", labels)
    assert google == read_segments(tmp_path / "plain.csv", labels)
    assert google[0].labels == ("/m/a", "/t/c") and google[0].start == 30.0 and google[1].ytid == "abc_def-123"
    assert google[0].segment_id == "--PJHxphWEs_30000"
    assert labels.column() == {"/m/a": 0, "/m/b": 1, "/t/c": 2}


@pytest.mark.parametrize("row, message", [
    ('x1, 0.0, 10.0, /m/a,/t/c', r"bad\.csv:6: expected 4 fields .*quoted"),
    ('x1, zero, 10.0, "/m/a"', r"bad\.csv:6: start/end 'zero'"),
    ('x1, 0.0, 10.0, "/m/zzz"', r"bad\.csv:6: label '/m/zzz' is not in the label list"),
    ('x1, 0.0, 10.0, ""', r"bad\.csv:6: empty YTID or label list"),
    ('x1, 10.0, 0.0, "/m/a"', r"bad\.csv:6: end 0.0 is not after start 10.0"),
])
def test_malformed_row_names_file_and_line(tmp_path, labels, row, message):
    (tmp_path / "bad.csv").write_text(GOOGLE + row + "\n")
    with pytest.raises(MetadataError, match=message):
        read_segments(tmp_path / "bad.csv", labels)


def test_malformed_labels_file(tmp_path):
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(MetadataError, match=r"labels\.csv:3: expected index 1"):
        read_labels(tmp_path / "labels.csv")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(MetadataError, match="no labels found"):
        read_labels(tmp_path / "empty.csv")
    with pytest.raises(MetadataError, match=r"missing\.csv: no such file; check the path"):
        read_labels(tmp_path / "missing.csv")


def test_strong_labels(tmp_path):
    (tmp_path / "strong.tsv").write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
                                         "--PJHxphWEs_30000\t0.5\t2.25\t/m/a\n--PJHxphWEs_30000\t3\t4\t/m/x\n"
                                         "other_0\t1\t9.5\t/t/c\n")
    events = read_strong(tmp_path / "strong.tsv")
    assert events == {"--PJHxphWEs_30000": [(0.5, 2.25, "/m/a"), (3.0, 4.0, "/m/x")], "other_0": [(1.0, 9.5, "/t/c")]}
    (tmp_path / "bad.tsv").write_text("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\nseg\t2\t1\t/m/a\n")
    with pytest.raises(MetadataError, match=r"bad\.tsv:2: offset 1.0 is before onset 2.0"):
        read_strong(tmp_path / "bad.tsv")
