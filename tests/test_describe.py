"""`python -m fastsca.describe`: the table a user reads before training, built from fastsca alone (the profiles'
model side lives in fastsca/profiles.py; nothing in fastsca/ imports train/)."""
import ast
from pathlib import Path

import pytest

import fastsca
from fastsca.describe import describe, main


def test_at_sca_3_table(capsys):
    main(["at-sca-3"])
    table = capsys.readouterr().out
    assert table.count("sca on 100x4") == 3 and "sca on 100x2" not in table and "sca on 100x1" not in table
    assert "256x100x4" in table and "512x100x4" in table
    assert "attention share of parameters" in table


def test_reports_add_up():
    reports = describe("at-sca-3")
    blocks = [r for r in reports if r.name.startswith("block")]
    assert [r.output_shape[1:] for r in blocks] == [
        (32, 200, 32), (64, 100, 16), (128, 100, 8), (256, 100, 4), (256, 100, 4), (512, 100, 4), (512, 100, 4)]
    assert [r.attention_parameters > 0 for r in blocks] == [False] * 4 + [True] * 3
    baseline = describe("baseline")
    extra = sum(r.parameters for r in reports) - sum(r.parameters for r in baseline)
    assert extra == sum(r.attention_parameters for r in reports)
    assert 9.0 < sum(r.gflops for r in baseline) < sum(r.gflops for r in reports) < 12.0   # about 11.4 for at-sca-3


def test_unknown_preset_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["at-sca-7"])


def test_profiles_take_their_model_defaults_from_fastsca():
    from dataclasses import fields

    from fastsca.profiles import MODEL_PROFILES, ModelProfile
    from train.profiles import PROFILES
    assert list(PROFILES) == list(MODEL_PROFILES)
    for name, profile in PROFILES.items():
        assert {f.name: getattr(profile, f.name) for f in fields(ModelProfile)} == vars(MODEL_PROFILES[name])


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_no_fastsca_module_imports_train():
    """The model layer must not know how it is trained: no `import train...` anywhere in fastsca/, at the top of a
    file or inside a function, nor in kernels/, the one package of this repository that fastsca imports."""
    root = Path(fastsca.__file__).parents[1]
    files = sorted((root / "fastsca").glob("*.py")) + sorted((root / "kernels").glob("*.py"))
    found = {str(path.relative_to(root)): sorted(name for name in _imported_modules(path)
                                                 if name.split(".")[0] == "train") for path in files}
    assert {path: names for path, names in found.items() if names} == {}
    assert "fastsca/describe.py" in found and "fastsca/hub.py" in found and "kernels/attention.py" in found
