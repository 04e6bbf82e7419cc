"""kernels/compile_cache.py: torch.compile's cache key carries a digest of the kernels' source, so a graph
compiled against another version of the fastsca ops (an upgrade that changed only a backward formula) is a
cache miss, not a replay that calls the new ops with old arguments."""
from types import SimpleNamespace

import torch

from kernels import compile_cache


def test_importing_kernels_tags_the_cache_key_with_the_source_digest():
    import kernels  # noqa: F401  (the import tags)
    digest = compile_cache.kernels_digest()
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert compile_cache.TAG_PREFIX + digest in torch.compiler.config.cache_key_tag


def test_the_digest_follows_every_source_file(tmp_path, monkeypatch):
    for name, text in (("a.py", "x = 1\n"), ("b.py", "y = 2\n")):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(compile_cache, "PACKAGE", tmp_path)
    before = compile_cache.kernels_digest()
    (tmp_path / "b.py").write_text("y = 3\n")
    changed = compile_cache.kernels_digest()
    (tmp_path / "b.py").write_text("y = 2\n")
    assert before != changed and compile_cache.kernels_digest() == before


def test_a_users_own_tag_is_kept_and_ours_added_once():
    # torch's own patch restores the config entry (pytest's monkeypatch would delete it from the config module)
    with torch.compiler.config.patch(cache_key_tag="my-experiment"):
        tag = compile_cache.tag_compile_caches()
        compile_cache.tag_compile_caches()
        assert torch.compiler.config.cache_key_tag == f"my-experiment+{tag}"
    assert compile_cache.TAG_PREFIX + compile_cache.kernels_digest() in torch.compiler.config.cache_key_tag


def test_a_torch_without_the_cache_key_is_left_as_it_is():
    config = SimpleNamespace()   # torch before 2.6 has no cache_key_tag
    assert compile_cache.tag_compile_caches(config) is None and vars(config) == {}
