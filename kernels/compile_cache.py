"""torch.compile's caches keyed by this version of the kernels: a compiled graph cached by another version is
never replayed.

Inductor's and AOTAutograd's on-disk caches key a graph by the graph the model traces, not by the code behind
a custom op's autograd formula: after an upgrade that changes only a backward (its ops' arguments, say), a
warm cache hands back the old compiled backward, which then calls the new op with the old arguments and
fails. `tag_compile_caches` adds a digest of the kernels package's source to
`torch.compiler.config.cache_key_tag` (beside any tag the user set), so a changed kernel is a cache miss.
"""
import hashlib
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent
TAG_PREFIX = "fastsca-kernels-"


def kernels_digest() -> str:
    """The first 16 hex digits of the SHA-256 of the package's .py files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def tag_compile_caches(config=None) -> str | None:
    """Add this version's tag to torch.compile's cache key (`config`: torch.compiler.config; once; a user's own tag
    is kept) and return it; None where torch has no such key (before 2.6), whose caches stay as they are."""
    config = torch.compiler.config if config is None else config
    if not hasattr(config, "cache_key_tag"):
        return None
    tag = TAG_PREFIX + kernels_digest()
    current = config.cache_key_tag
    if tag not in current:
        config.cache_key_tag = f"{current}+{tag}" if current else tag
    return tag
