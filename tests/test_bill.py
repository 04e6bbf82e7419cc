"""bench.bill: the bill on paper reproduces the whole-step estimate it starts from, and its arithmetic is exact."""
import json
from pathlib import Path

import numpy as np
import pytest

from bench.bill import BYTES_PER_CLIP, SCENARIOS, Scenario, bill, step_ms
from bench.pricing import GPUS, LAUNCH_US, Gpu

STEP_REPORT = Path(__file__).parents[1] / "bench/results/2026-12-02-sm90-whole-step-b256.json"


@pytest.mark.parametrize("step", ["reference", "fastsca"])
def test_the_datasheet_scenario_is_the_whole_step_estimate(step):
    report = json.loads(STEP_REPORT.read_text())
    for gpu in GPUS:
        assert step_ms(report["launches"][step], gpu, SCENARIOS[0]) == pytest.approx(
            report["steps"][step][f"{gpu.name} ms"], rel=1e-12)


def test_each_launch_is_bound_by_its_slower_resource_under_the_scenario():
    rng = np.random.default_rng(26032)
    gpu = Gpu("test", float(rng.uniform(1e12, 5e12)), float(rng.uniform(1e14, 1e15)))
    scenario = Scenario("half", 0.5, 0.25)
    memory_bound = {"bytes": int(rng.integers(10**8, 10**9)), "flops": 0}
    compute_bound = {"bytes": 1000, "flops": int(rng.integers(10**12, 10**13))}
    expected = (memory_bound["bytes"] / (gpu.bytes_per_s * 0.5) + compute_bound["flops"] / (gpu.bf16_flops_per_s * 0.25)
                ) * 1e3 + 2 * LAUNCH_US * 1e-3
    assert step_ms([memory_bound, compute_bound], gpu, scenario) == pytest.approx(expected, rel=1e-12)


def test_hours_disk_and_cores_follow_from_the_step_rate():
    rng = np.random.default_rng(93194)
    launch = {"bytes": int(rng.integers(10**9, 10**10)), "flops": int(rng.integers(10**12, 10**13))}
    reader = float(rng.uniform(200, 2000))
    result = bill({"batch": 96, "date": "x", "launches": {"fastsca": [launch]}}, reader)
    assert len(result["rows"]) == len(GPUS) * len(SCENARIOS)
    for row in result["rows"]:
        gpu = next(g for g in GPUS if g.name == row["gpu"])
        scenario = next(s for s in SCENARIOS if s.name == row["scenario"])
        clips_per_s = 96 / step_ms([launch], gpu, scenario) * 1e3
        assert row["clips_per_s"] == pytest.approx(clips_per_s, rel=1e-12)
        assert row["gpu_hours"]["eval"] == pytest.approx(20_371 / clips_per_s / 3600, rel=1e-12)
        assert row["disk_gb_per_s"] == pytest.approx(clips_per_s * 320_000 / 1e9, rel=1e-12)
        assert row["reader_cores"] == pytest.approx(clips_per_s / reader, rel=1e-12)
    assert BYTES_PER_CLIP == 320_000
    assert result["storage_gb"]["unbalanced train"] == pytest.approx(2_041_789 * 320_000 / 1e9, rel=1e-12)
