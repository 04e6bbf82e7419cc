"""Opening the text files users hand us (label lists, segment and manifest CSVs, strong-label TSVs) as they come.

Spreadsheets and other tools write the same CSV in several ways: UTF-8 with or without a byte-order mark,
UTF-16 with one (Excel's "Unicode text"), compressed with gzip, bzip2 or xz (AudioSet mirrors ship
`.csv.gz`). `open_text` reads every one of these as the same text, choosing by the file's first bytes
rather than its name, and turns what it cannot read into `TextFileError`: one line naming the file and
what to do, never a UnicodeDecodeError from deep inside a parser.
"""
import bz2
import codecs
import gzip
import io
import lzma
from pathlib import Path

# The first bytes of each compressed format fastsca reads, and its opener.
COMPRESSED_MAGIC = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)

# Byte-order marks, longest first so UTF-32's is not taken for UTF-16's.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class TextFileError(ValueError):
    """A text file that cannot be opened or decoded; the message names the file and what to do."""


def _raw_opener(path: Path):
    """A function opening `path` as a binary stream, decompressing when its first bytes say so."""
    with path.open("rb") as handle:
        head = handle.read(8)
    for magic, opener in COMPRESSED_MAGIC:
        if head.startswith(magic):
            return lambda: opener(path, "rb")
    return lambda: path.open("rb")


def read_text(path: str | Path, option: str = "") -> str:
    """The whole text of `path` (plain or compressed; UTF-8, UTF-8 with a BOM, UTF-16 or UTF-32 with one).

    `option` names the command-line option the file came from, for the error message.
    """
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    try:
        with _raw_opener(path)() as handle:
            data = handle.read()
    except FileNotFoundError:
        raise TextFileError(f"{where}: no such file; check the path") from None
    except IsADirectoryError:
        raise TextFileError(f"{where}: is a folder, not a file; give the file inside it") from None
    except (OSError, EOFError, lzma.LZMAError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise TextFileError(f"{where}: cannot read ({reason}); is the file whole?") from None
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TextFileError(f"{where}:{line}: not {encoding.upper()} text (byte {data[error.start]:#04x}); "
                            f"save the file as UTF-8") from None


def open_text(path: str | Path, option: str = "") -> io.StringIO:
    """`read_text` as a text stream for the csv module (newline="" semantics: line ends are kept)."""
    return io.StringIO(read_text(path, option), newline="")
