"""bench.bill: the bill on paper reproduces the whole-step estimate it starts from, and its arithmetic is exact."""
import json
from pathlib import Path

import numpy as np
import pytest

from bench.bill import BILL_PRICES, BYTES_PER_CLIP, bill, newest_step_report, step_ms
from bench.pricing import GPUS, PRICES

RESULTS = Path(__file__).parents[1] / "bench/results"
PRICED_REPORTS = [path for path in sorted(RESULTS.glob("*-whole-step-b*.json"))
                  if "H100 SXM derated ms" in json.loads(path.read_text())["steps"]["fastsca"]]
"""The whole-step reports priced by bench/pricing.py (from 2026-12-06; the older ones hold only the floor)."""


@pytest.mark.parametrize("path", PRICED_REPORTS, ids=lambda path: path.stem)
@pytest.mark.parametrize("step", ["reference", "fastsca"])
def test_each_price_is_the_whole_step_reports_figure(step, path):
    report = json.loads(path.read_text())
    for gpu in GPUS:
        for price in BILL_PRICES:
            assert step_ms(report["launches"][step], gpu, price) == pytest.approx(
                report["steps"][step][f"{gpu.name} {price} ms"], rel=1e-12)


def test_hours_disk_and_cores_follow_from_the_step_rate():
    rng = np.random.default_rng(93194)
    launch = {"kind": "fastsca", "phase": "backward", "in_graph": True, "detail": {},
              "bytes": int(rng.integers(10**9, 10**10)), "flops": int(rng.integers(10**12, 10**13))}
    reader = float(rng.uniform(200, 2000))
    result = bill({"batch": 96, "date": "x", "launches": {"fastsca": [launch]}}, reader)
    assert len(result["rows"]) == len(GPUS) * len(BILL_PRICES)
    for row in result["rows"]:
        gpu = next(g for g in GPUS if g.name == row["gpu"])
        clips_per_s = 96 / (PRICES[row["scenario"]](launch, gpu) * 1e-3) * 1e3
        assert row["clips_per_s"] == pytest.approx(clips_per_s, rel=1e-12)
        assert row["gpu_hours"]["eval"] == pytest.approx(20_371 / clips_per_s / 3600, rel=1e-12)
        assert row["disk_gb_per_s"] == pytest.approx(clips_per_s * 320_000 / 1e9, rel=1e-12)
        assert row["reader_cores"] == pytest.approx(clips_per_s / reader, rel=1e-12)
    assert BYTES_PER_CLIP == 320_000
    assert result["storage_gb"]["unbalanced train"] == pytest.approx(2_041_789 * 320_000 / 1e9, rel=1e-12)


def test_the_bill_prices_the_newest_batch_256_count_by_default(tmp_path):
    for name in ("2026-12-02-sm90-whole-step-b256.json", "2026-12-09-sm90-whole-step-b64.json",
                 "2026-12-06-sm90-whole-step-b256.json", "2026-12-04-bill.json"):
        (tmp_path / name).write_text("{}")
    assert newest_step_report(tmp_path) == (tmp_path / "2026-12-06-sm90-whole-step-b256.json").as_posix()
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(SystemExit, match="no \\*-whole-step-b256.json in .*; run `python -m bench.whole_step"):
        newest_step_report(tmp_path)
