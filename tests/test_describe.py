"""`python -m fastsca.describe`: the table a user reads before training."""
import pytest

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
