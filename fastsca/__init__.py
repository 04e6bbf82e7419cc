"""fastsca: AT-SCA audio tagging (spatial and channel-wise attention, MIL attention pooling).

The package's names are imported on first use, so `import fastsca.audio` (what train.pack's and
train.convert's decoding workers import) does not pay for torch and the Triton kernels: 1 s against 0.1 s
here, and seconds more in each freshly spawned worker on a busy machine. Lazy imports also keep runpy
quiet when `python -m fastsca.tag` or `python -m fastsca.hub` runs a module the package would otherwise
have imported already.
"""
from importlib import import_module

_HOMES = {
    "ATSCA": "fastsca.model",
    "TaggingOutput": "fastsca.model",
    "build_model": "fastsca.model",
    "ModelConfig": "fastsca.config",
    "PRESETS": "fastsca.config",
    "Tagger": "fastsca.tagger",
    "TagResult": "fastsca.tagger",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'fastsca' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
