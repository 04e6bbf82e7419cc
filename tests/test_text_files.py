"""fastsca.text_files: the same CSV text however it was saved (BOM, UTF-16, gzip, bzip2, xz), one-line errors otherwise."""
import bz2
import codecs
import gzip
import lzma

import numpy as np
import pytest

from fastsca.text_files import TextFileError, read_text
from train.data.csv_meta import MetadataError, read_segments

TEXT = "# comment\nYTID,start_seconds,end_seconds,positive_labels\n--PJHxphWEs, 30.000, 40.000, \"/m/09x0r,/t/dd00088\"\r\nabc_é, 0.0, 10.0, \"/m/0\"\n"

SAVERS = {
    "utf-8": lambda text: text.encode("utf-8"),
    "utf-8 with BOM": lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),
    "utf-16 LE with BOM": lambda text: text.encode("utf-16"),
    "utf-16 BE with BOM": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    "utf-32 with BOM": lambda text: text.encode("utf-32"),
    "gzip": lambda text: gzip.compress(text.encode("utf-8")),
    "bzip2 of utf-8 with BOM": lambda text: bz2.compress(codecs.BOM_UTF8 + text.encode("utf-8")),
    "xz": lambda text: lzma.compress(text.encode("utf-8")),
}


@pytest.mark.parametrize("saver", list(SAVERS))
def test_every_saving_reads_as_the_same_text(tmp_path, saver):
    path = tmp_path / "segments.csv"          # the name says nothing: the first bytes decide
    path.write_bytes(SAVERS[saver](TEXT))
    assert read_text(path) == TEXT
    segments = read_segments(path)
    assert [s.ytid for s in segments] == ["--PJHxphWEs", "abc_é"]
    assert segments[0].labels == ("/m/09x0r", "/t/dd00088")


def test_latin1_text_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_bytes(TEXT.encode("latin-1"))
    with pytest.raises(TextFileError, match=r"segments.csv:4: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        read_text(path)
    with pytest.raises(MetadataError, match="save the file as UTF-8"):
        read_segments(path)


@pytest.mark.parametrize("damage", ["missing", "folder", "truncated gzip"])
def test_unreadable_files_are_one_line(tmp_path, damage):
    path = tmp_path / "labels.csv"
    if damage == "folder":
        path.mkdir()
    elif damage == "truncated gzip":
        data = gzip.compress(np.random.default_rng(81624).bytes(4000))
        path.write_bytes(data[:len(data) // 2])
    with pytest.raises(TextFileError) as caught:
        read_text(path, "--labels")
    message = str(caught.value)
    assert message.startswith(f"--labels {path}: ") and "\n" not in message
