"""What `fastsca.tag` reads: its FILE arguments expanded into the audio files to tag, each with the name it is
reported under.

A file argument is tagged under the path as given. A folder is walked recursively; its files are named
by their path relative to it (prefixed with the folder as given when there are several arguments) and
taken in the order of those names, so same-named files in different folders stay apart in the table,
the events and the figures. In a folder, a file with an audio extension is tagged (if its content is
not audio, that is a one-line error when it is read); any other file is tagged if soundfile reads its
header, and is otherwise reported on one line and skipped. Hidden files and folders, the run's own
outputs (table, events files, figures' folder) and the `.tmp` files of atomic writes are passed over
silently. A link to a folder already walked (a symlink loop) is reported and not followed; a file
reached twice is tagged once.

A .zip or .tar (.tar.gz, .tgz, .tar.bz2, .tar.xz), given or found in a folder, is read like a folder,
member by member, without unpacking it to disk: its audio members (by extension) are named by their
path inside it. A zip member or a plain tar's member is streamed from the archive; a member of a
compressed tar is decompressed into memory first (one member at a time), since libsndfile seeks and
a compressed tar can only be read forward.
"""
import contextlib
import io
import os
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import soundfile

# Extensions tagged without looking at the content: what soundfile (libsndfile >= 1.1) reads.
AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".au", ".snd", ".caf", ".w64", ".rf64"})


@dataclass(frozen=True)
class Input:
    """One audio file to tag."""

    path: str
    """Where to read it."""
    name: str
    """What it is reported under: in the printed results, the table, the events and the figure names."""
    member: str | None = None
    """Its name inside the archive at `path`; None for a file on disk."""


def stamp(item: Input) -> list[int] | None:
    """What tells a file from one put in its place since: the size and modification time of the file (for an
    archive's member, of the archive); None when it cannot be read."""
    try:
        status = os.stat(item.path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


@dataclass(frozen=True)
class Inputs:
    """The expanded arguments."""

    files: list[Input]
    """The audio files to tag, in order, each once."""
    skipped: list[str]
    """One line per argument or file passed over (not audio, a symlink loop, given twice, unreadable folder)."""


def _is_audio(path: Path) -> bool:
    """The file's header reads as audio (by content, whatever its extension)."""
    try:
        soundfile.info(str(path))
    except Exception:   # libsndfile raises several types for a file it does not know; all mean "not audio"
        return False
    return True


def _walk(folder: Path, prefix: str, ignore: set[Path], skipped: list[str]) -> list[Input]:
    """The audio files under `folder`, sorted, named `prefix` + their path relative to it; files and folders in
    `ignore` are passed over."""
    found, seen_folders = [], set()

    def report(error: OSError) -> None:
        skipped.append(f"{error.filename}: cannot list the folder ({error.strerror}); skipped")

    for root, folders, files in os.walk(folder, onerror=report, followlinks=True):
        real = Path(root).resolve()
        if real in seen_folders:
            skipped.append(f"{root}: a link to a folder already walked (a symlink loop); not followed")
            folders[:] = []
            continue
        seen_folders.add(real)
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and (Path(root) / name).resolve() not in ignore)
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or name.endswith(".tmp") or path.resolve() in ignore:
                continue
            relative = path.relative_to(folder).as_posix()
            if is_archive(path):
                found += _archive_members(path, f"{prefix}{relative}/", skipped)
                continue
            if path.suffix.lower() not in AUDIO_EXTENSIONS and not (path.is_file() and _is_audio(path)):
                skipped.append(f"{path}: not an audio file (no audio extension, and soundfile cannot read "
                               f"it); skipped")
                continue
            found.append(Input(str(path), prefix + relative))
    return sorted(found, key=lambda item: item.name)


# Archive names read member by member, and the tar compressions (read into memory one member at a time).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES) and path.is_file()


def _archive_members(archive: Path, prefix: str, skipped: list[str]) -> list[Input]:
    """The audio members of a zip or tar archive, by name; an archive that cannot be read is reported."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as opened:
                names = [info.filename for info in opened.infolist() if not info.is_dir()]
        else:
            with tarfile.open(archive) as opened:
                names = [member.name for member in opened.getmembers() if member.isfile()]
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        skipped.append(f"{archive}: cannot read the archive ({error}); skipped")
        return []
    audio = [name for name in names if Path(name).suffix.lower() in AUDIO_EXTENSIONS
             and not any(part.startswith(".") for part in Path(name).parts)]
    # a tar made with `tar cf A.tar .` names its members "./a.wav"
    return [Input(str(archive), prefix + posixpath.normpath(name), member=name)
            for name in sorted(audio)]


class _Member(io.RawIOBase):
    """An archive member as a readable, seekable binary file named "ARCHIVE/MEMBER" in messages."""

    def __init__(self, handle: BinaryIO, name: str) -> None:
        super().__init__()
        self._handle, self.name = handle, name

    def __repr__(self) -> str:   # libsndfile's messages name the file by its repr
        return repr(self.name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class InputReader:
    """Opens inputs for reading, keeping each archive open while its members are read."""

    def __init__(self) -> None:
        self._archives: dict[str, zipfile.ZipFile | tarfile.TarFile] = {}

    @contextlib.contextmanager
    def open(self, item: Input) -> Iterator["str | BinaryIO"]:
        """The path of a file on disk, or an archive member opened for reading."""
        if item.member is None:
            yield item.path
            return
        archive = self._archives.get(item.path)
        if archive is None:
            archive = self._archives[item.path] = (zipfile.ZipFile(item.path) if item.path.lower().endswith(".zip")
                                                   else tarfile.open(item.path))
        if isinstance(archive, zipfile.ZipFile):
            handle = archive.open(item.member)
        else:
            handle = archive.extractfile(item.member)
            if not item.path.lower().endswith(".tar"):   # compressed: forward-only underneath
                handle = io.BytesIO(handle.read())
        with handle:
            yield _Member(handle, f"{item.path}/{posixpath.normpath(item.member)}")

    def close(self) -> None:
        for archive in self._archives.values():
            archive.close()


def expand_inputs(arguments: list[str], ignore: tuple[Path, ...] = ()) -> Inputs:
    """The audio files named by `arguments` (files, folders, archives); in folders, the files and folders in
    `ignore` (the run's own outputs: the table, the events files, the figures' folder) are passed over."""
    ignored = {Path(p).resolve() for p in ignore}
    files, skipped, seen = [], [], {}
    for argument in arguments:
        path = Path(argument)
        prefix = "" if len(arguments) == 1 else path.as_posix().rstrip("/") + "/"
        if path.is_dir():
            found = _walk(path, prefix, ignored, skipped)
            if not found:
                skipped.append(f"{argument}: no audio file in this folder")
        elif is_archive(path):
            found = _archive_members(path, prefix, skipped)
            if not found:
                skipped.append(f"{argument}: no audio file in this archive")
        else:   # a file, or a path that read_blocks will report ("no such file"); "clip.wav/" is clip.wav
            given = argument.rstrip(os.sep) or argument
            found = [Input(given, given)]
        for item in found:
            key = (os.path.realpath(item.path), item.member)
            if key in seen and os.path.exists(key[0]):
                where = item.path if item.member is None else f"{item.path}/{item.member}"
                skipped.append(f"{where}: given twice (as {seen[key]}); tagged once")
                continue
            seen[key] = item.name
            files.append(item)
    return Inputs(files=files, skipped=skipped)
