"""pytest-benchmark wiring of the bench grid (bench/cases.py): the environment, one fixture that runs a case,
and the one summary table the run ends with.

`pytest bench/ --benchmark-only` runs the grid; plain `pytest` from the repository root does not
collect bench/ (pyproject's testpaths). The JSON of `--benchmark-json` carries, per case, the
minimal bytes, achieved GB/s, clips/s and peak memory in `extra_info`, and the library versions and
device in `machine_info`. After pytest-benchmark's tables (one per group) and pytest's own summary,
the run prints one markdown table (bench.summarise.render_summary: provider, case, median, speed-up
over eager and over torch.compile of the reference, GB/s or clips/s) and writes it to
`--bench-summary` (default: summary.md in pytest-benchmark's .benchmarks folder).
"""
import time
from pathlib import Path

import pytest

from bench import cases, harness, summarise

STARTED = pytest.StashKey[float]()
SUMMARY_PATH = ".benchmarks/summary.md"
"""Beside pytest-benchmark's own storage (git-ignored): each run overwrites it."""


def pytest_addoption(parser):
    parser.addoption("--bench-summary", default=SUMMARY_PATH,
                     help="markdown file for the summary table of the benchmarks run (default %(default)s)")


def pytest_configure(config):
    config.stash[STARTED] = time.perf_counter()


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


# tryfirst makes this wrapper the outermost one, so the table comes after pytest-benchmark's tables
# and after pytest's short summary of the (many) skipped cases: the last thing before the final line.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    result = yield
    session = getattr(config, "_benchmarksession", None)   # pytest-benchmark's; absent under -p no:benchmark
    run = summarise.session_run(session.benchmarks if session is not None else [])
    if run["benchmarks"]:
        elapsed = time.perf_counter() - config.stash[STARTED]
        markdown = summarise.render_summary(run, harness.environment(cases.BenchEnv.detect().device), elapsed)
        path = Path(config.getoption("--bench-summary", SUMMARY_PATH))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown)
        terminalreporter.write_sep("=", "fastsca benchmark summary")
        terminalreporter.write(markdown)
        terminalreporter.write_line(f"(written to {path})")
    return result
