"""Files a user keeps, written whole or not at all: into `NAME.tmp`, then renamed onto NAME.

A rename within a folder is atomic, so a file under its final name is always complete, and a failed or
interrupted write (a full disk, Ctrl-C) leaves the previous file as it was and no `.tmp` behind. Used by the
model folder and exports (fastsca/hub.py, fastsca/export.py), fastsca.tag's figures and events files, and
train.run's checkpoints (train/checkpoint.py).
"""
import os
from pathlib import Path


def write_atomically(path: Path, write, keep_suffix: bool = False) -> None:
    """`write(tmp_path)`, then rename onto `path`; the temporary file is removed whatever happens. With
    `keep_suffix` it is NAME.tmp.EXT rather than NAME.EXT.tmp, for writers that check the suffix
    (torch.export.save wants .pt2)."""
    tmp = path.with_suffix(".tmp" + path.suffix) if keep_suffix else path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
