"""`train.evaluate` never writes over a per-class CSV it did not write: such a file in --out is refused with one
line before any clip is scored, and left byte for byte; its own tables (their header rows) are replaced, and
--overwrite replaces any."""
import pytest

from train import checkpoint, evaluate

from test_checkpoint import tiny_config, tiny_payload


@pytest.fixture
def model(tmp_path) -> str:
    """An untrained checkpoint: the refusal comes before any scoring."""
    path = tmp_path / "model.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))
    return str(path)


@pytest.mark.parametrize("name", sorted(evaluate.OWN_FILES))
def test_a_table_it_did_not_write_is_refused_and_kept(model, tmp_path, name, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("class,my notes\ndog,keep me\n")
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", model, "--data", str(tmp_path / "never-read"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and err == [f"error: --out {out}: its {name} was not written by train.evaluate; "
                                               f"it was left as it is: give another --out, or add --overwrite to "
                                               f"replace it"]
    assert (out / name).read_text() == "class,my notes\ndog,keep me\n"
    evaluate.check_own_files(out, overwrite=True)   # --overwrite lifts it


def test_its_own_tables_are_replaced(tmp_path):
    for name, header in evaluate.OWN_FILES.items():
        (tmp_path / name).write_text(f"{header}\r\ndog,1,2,3\n")
    evaluate.check_own_files(tmp_path, overwrite=False)
