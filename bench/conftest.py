"""pytest-benchmark wiring of the bench grid (bench/cases.py): the environment, one fixture that runs a case.

`pytest bench/ --benchmark-only` runs the grid; plain `pytest` from the repository root does not
collect bench/ (pyproject's testpaths). The JSON of `--benchmark-json` carries, per case, the
minimal bytes, achieved GB/s, clips/s and peak memory in `extra_info`, and the library versions and
device in `machine_info`.
"""
import pytest

from bench import cases, harness


@pytest.fixture(scope="session")
def bench_env(tmp_path_factory) -> cases.BenchEnv:
    """The device the grid runs on; the loader's HDF5 set is generated once per session under a tmp dir."""
    harness.configure_dynamo()
    env = cases.BenchEnv.detect(data_dir=tmp_path_factory.mktemp("bench-data"))
    harness.configure_threads(env.device)
    return env


@pytest.fixture
def run_case(benchmark, bench_env):
    """run_case(case): skip it with its reason, or prepare, warm up and time it, filling extra_info."""

    def run(case: cases.Case) -> None:
        reason = cases.skip_reason(case, bench_env)
        if reason:
            pytest.skip(reason)
        benchmark.group = case.group
        benchmark.extra_info.update(case.describe())
        with cases.prepare(case, bench_env) as prepared:
            benchmark.extra_info.update(prepared.info)
            benchmark.extra_info.update(harness.run_pytest_benchmark(benchmark, prepared))

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """Library versions and the device, beside pytest-benchmark's CPU description."""
    machine_info["fastsca"] = harness.environment(cases.BenchEnv.detect().device)
