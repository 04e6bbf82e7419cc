"""Processes that only decode audio or read shards never import torch (each spawned worker would pay ~1-9 s)."""
import subprocess
import sys

import pytest

WORKER_MODULES = ["train.pack", "train.convert", "train.data.dali_source", "fastsca.audio", "fastsca.text_files"]


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_worker_side_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'triton', 'kernels') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_package_names_still_resolve():
    import fastsca
    assert fastsca.build_model("baseline", num_classes=3).__class__ is fastsca.ATSCA
    assert set(fastsca.__all__) <= set(dir(fastsca))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fastsca.nothing
