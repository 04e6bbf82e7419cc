"""`python -m bench.gpu_report --cpu-smoke` runs every benchmark case at tiny sizes and writes its JSON and markdown.

A subprocess, so the report's process-wide settings (one CPU thread, torch.compile limits) stay out
of this test session; `aot_eager` keeps compilation to tracing (inductor's C++ builds would take
minutes on 2 cores) while still running dynamo and AOT autograd over every compiled case.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_report_writes_json_and_markdown(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_report", "--cpu-smoke", "--compile-backend", "aot_eager",
         "--out-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (json_path,) = (tmp_path / "results").glob("*-cpu-smoke.json")
    (md_path,) = (tmp_path / "results").glob("*-cpu-smoke.md")
    report = json.loads(json_path.read_text())
    assert {"environment", "mode", "copy_bandwidth", "cases", "targets", "train_memory", "elapsed_s"} <= report.keys()
    assert {"date", "device", "torch", "triton", "dali", "cuda"} <= report["environment"].keys()
    assert report["copy_bandwidth"]["gbps"] > 0
    assert report["fused_check"]["passed"] and report["fused_check"]["precision"] == "fp32"
    assert "fastsca's fused model (fused attention and backbone) matches the reference" in md_path.read_text()

    by_suite = {}
    for record in report["cases"]:
        by_suite.setdefault(record["suite"], []).append(record)
    assert {"pool", "squeeze", "gate", "sca", "block", "train_step", "loader"} <= by_suite.keys()
    errors = [f"{r['id']}: {r['reason']}" for r in report["cases"] if r["status"] == "error"]
    assert not errors, errors
    for suite in ("pool", "squeeze", "gate", "sca"):
        grid = {(r["dtype"], r["provider"], r["mode"]) for r in by_suite[suite] if r["status"] == "ok"}
        providers = {"eager", "compile", "fused"} | ({"fused_compile"} if suite == "sca" else set())
        modes = ("forward", "backward", "full") if suite == "sca" else ("forward",)
        assert grid == {(d, p, m) for d in ("bf16", "fp32") for p in providers for m in modes}, suite
        for record in by_suite[suite]:
            assert record["time_ms"] > 0 and record["gbps"] > 0 and record["minimal_bytes"] > 0
            assert "vs_eager" in record and "vs_compile" in record
    assert {(r["block"], r["provider"]) for r in by_suite["block"] if r["status"] == "ok"} == \
        {("odd-B3-C5-7x13x11", p) for p in ("eager", "compile", "compile_fused")}
    assert all(r["vs_compile"] > 0 for r in by_suite["block"] if r["status"] == "ok")
    steps = {(r["model"], r["provider"]): r for r in by_suite["train_step"] if r["status"] == "ok"}
    assert {("at-sca-3", p) for p in ("eager", "fused", "compile", "compile_fused")} <= steps.keys()
    assert all(r["clips_per_s"] > 0 for r in steps.values())
    for record in by_suite["loader"]:   # DALI may be missing: then it must say so
        assert record["status"] == "ok" or record["reason"].startswith("DALI not installed"), record
        if record["status"] == "ok":
            assert record["clips_per_s"] > 0
    assert {t["status"] for t in report["targets"]} <= {"pass", "fail"} and report["targets"]
    assert {t["dtype"] for t in report["targets"]} == {"bf16", "fp32"}

    markdown = md_path.read_text()
    for heading in ("# fastsca benchmarks", "## Copy-bandwidth ceiling", "## Targets", "## SCA module",
                    "## `attention_gate`", "## Residual block", "### odd: 5->7 channels on 13x11", "## Training step",
                    "## Loader"):
        assert heading in markdown
    assert markdown in done.stdout


# What a GPU machine's image lacks: bench.gpu_report must run there from a plain checkout.
NOT_ON_GPU_MACHINES = ("nvidia.dali", "librosa", "pytest_benchmark", "sklearn", "scipy", "h5py", "soundfile",
                       "soxr", "matplotlib", "tqdm", "pytest")
BLOCKED_RUN = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None   # `import name` raises ModuleNotFoundError, find_spec(name) returns None
sys.argv = ["bench.gpu_report"] + {argv!r}
runpy.run_module("bench.gpu_report", run_name="__main__")
"""


@pytest.mark.slow
def test_report_runs_with_only_torch_and_triton(tmp_path):
    """The loader cases skip with their reason, and the module and training cases run, when nothing but
    torch, triton and the repository can be imported."""
    argv = ["--cpu-smoke", "--compile-backend", "aot_eager", "--suites", "sca,train_step,loader",
            "--out-dir", str(tmp_path)]
    code = BLOCKED_RUN.format(blocked=sorted(NOT_ON_GPU_MACHINES), argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-cpu-smoke.json")
    records = json.loads(json_path.read_text())["cases"]
    loader = {r["provider"]: r for r in records if r["suite"] == "loader"}
    assert loader["dali"]["status"] == "skipped" and loader["dali"]["reason"].startswith("DALI not installed")
    assert loader["librosa"]["status"] == "skipped" and loader["librosa"]["reason"].startswith("librosa not installed")
    ran = [r for r in records if r["suite"] in ("sca", "train_step") and r["status"] == "ok"]
    errors = [f"{r['id']}: {r['reason']}" for r in records if r["status"] == "error"]
    assert not errors, errors
    assert {r["dtype"] for r in ran if r["suite"] == "sca"} == {"bf16", "fp32"}
    assert any(r["suite"] == "train_step" for r in ran)


@pytest.mark.slow
def test_no_case_depends_on_the_order_of_the_others():
    """A compiled module's backward, timed again and again over one retained graph, runs alone and after
    its forward and full cases, and AOTAutograd's buffer donation is off (with it, Inductor's compiled
    backward refuses retain_graph: seen on CUDA; the CPU build here does not donate these graphs)."""
    done = subprocess.run(
        [sys.executable, "-c", ORDER_RUN], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.split()[-1] == "ok"


ORDER_RUN = """
import torch
from bench import cases, harness
harness.configure_dynamo()
import torch._functorch.config
assert torch._functorch.config.donated_buffer is False
env = cases.BenchEnv(torch.device("cpu"), smoke=True, compile_backend="aot_eager")
grid = [c for c in cases.sca_cases(env) if c.provider == "compile" and c.dtype == "fp32"]
backward = [c for c in grid if c.mode == "backward"]
for case in backward + grid + backward[::-1]:
    with cases.prepare(case, env) as prepared:
        for _ in range(3):
            prepared.fn()
print("ok")
"""


def test_grid_follows_both_pooling_plans_in_bf16_and_fp32():
    """On a GPU the module and op cases cover every attention map of both plans in both dtypes, and the
    targets read at-sca-3's time-freq blocks (5-7 at 100x4 with 256/512/512 channels) at batch 256."""
    import torch

    from bench import cases

    env = cases.BenchEnv(torch.device("cuda"))   # a description only: nothing runs on it here
    assert {s.dims[1:] for s in cases.map_shapes(env)} == {(256, 100, 4), (512, 100, 4), (512, 100, 2), (512, 100, 1)}
    assert {s.batch for s in cases.map_shapes(env)} == {32, 256}
    assert sorted(s.dims for s in cases.target_maps(env)) == [(256, 256, 100, 4), (256, 512, 100, 4)]
    assert cases.target_blocks(env) == [(256, 256, 100, 4), (256, 512, 100, 4), (256, 512, 100, 4)]
    for suite_cases in (cases.sca_cases(env), cases.pass_cases("gate", env)):
        assert {c.dtype for c in suite_cases} == {"bf16", "fp32"}
        assert len({c.id for c in suite_cases}) == len(suite_cases)
    x = torch.empty(2, 3, 5, 7, dtype=torch.bfloat16)
    assert [cases.sca_minimal_bytes(m, x) for m in ("forward", "backward", "full")] == [4 * 420, 5 * 420, 9 * 420]
    assert cases.BenchEnv(torch.device("cpu")).dtypes == ("fp32",)


def _fake_session() -> list:
    """pytest-benchmark's session as `pytest bench/` on a CPU leaves it: one Metadata per benchmark that
    ran (the grid's extra_info from Case.describe and harness.figures), plus one that never ran."""
    from pytest_benchmark import stats   # a dev dependency (pyproject.toml): never skipped
    import torch

    from bench import cases, harness

    env = cases.BenchEnv(torch.device("cpu"))
    shape = next(s for s in cases.map_shapes(env) if s.dims == cases.CPU_MODULE_MAP)
    x = torch.empty(shape.dims)
    grid = [(cases.Case("sca", p, "full", shape.batch, shape, dtype="fp32"), cases.sca_minimal_bytes("full", x), None)
            for p in cases.SCA_PROVIDERS]
    grid += [(cases.Case("block", p, "full", 3, dtype="fp32", block=cases.CPU_BLOCK), None, None)
             for p in cases.BLOCK_PROVIDERS if p not in cases.AUTOTUNE_PROVIDERS]   # CUDA only
    grid += [(cases.Case("train_step", p, "step", 8, model=m), None, 8)
             for m in cases.TRAIN_MODELS for p in cases.TRAIN_PROVIDERS
             if not (m == "baseline" and "fused" in p)
             and p not in cases.CUDAGRAPH_PROVIDERS + cases.AUTOTUNE_PROVIDERS]   # CUDA only
    grid += [(cases.Case("loader", p, "epoch", 32), None, 256) for p in cases.LOADER_PROVIDERS]
    session = []
    for index, (case, minimal_bytes, items) in enumerate(grid):
        seconds = 0.01 * (index + 1)
        prepared = harness.Prepared(fn=lambda: None, device=env.device, minimal_bytes=minimal_bytes, items=items)
        info = {**case.describe(), **harness.figures(prepared, seconds)}
        session.append(_metadata(stats, case.id, info, [seconds] * 3))
    session.append(_metadata(stats, "test_tag_long_file[6min]",
                             {"suite": "tag", "provider": "eager", "mode": "360 s file", "audio_seconds": 360}, [1.5]))
    session.append(_metadata(stats, "never-ran", {"suite": "sca"}, []))
    return session


def _metadata(stats, name: str, extra_info: dict, durations: list[float]):
    from types import SimpleNamespace

    fixture = SimpleNamespace(name=name, fullname=f"bench/x.py::{name}", group=None, param=name, params=None,
                              extra_info=extra_info, cprofile_stats=None)
    metadata = stats.Metadata(fixture, iterations=1, options={})
    for seconds in durations:
        metadata.update(seconds)
    return metadata


def test_summary_table_has_its_columns_and_a_row_per_provider(tmp_path):
    """The table `pytest bench/` ends with: the six columns, one row per provider of each case that ran,
    speed-ups against the eager and compiled references of the same case (none where there are none);
    `python -m bench.summarise RUN.json` ends with the same table."""
    import torch

    from bench import cases, harness, summarise

    environment = {"device": "AMD EPYC", "date": "2026-12-02", "torch": "2.13.0+cpu", "triton": "3.9.0",
                   "cpu_count": 2, "torch_threads": 1, "load_average": "2.0 2.0 2.0"}
    run = summarise.session_run(_fake_session())
    markdown = summarise.render_summary(run, environment, 12.0)
    assert "e+" not in markdown, "no exponents in the figures"
    lines = markdown.splitlines()
    assert lines[0] == "# fastsca benchmark summary: AMD EPYC, 2026-12-02"
    table = [line for line in lines if line.startswith("|")]
    assert table == lines[-len(table):], "the table is the last thing in the summary"
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["provider", "case", "median", "x eager", "x compile", "throughput"]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in table[2:]]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    assert list(by_case) == ["sca B32-C256x100x4 fp32 full", "block odd-B3-C5-7x13x11 fp32 full",
                             "train_step baseline B8 step", "train_step at-sca-3 B8 step", "loader B32 epoch",
                             "tag 360 s file"]
    assert [r["provider"] for r in by_case["sca B32-C256x100x4 fp32 full"]] == list(cases.SCA_PROVIDERS)
    assert [r["provider"] for r in by_case["train_step at-sca-3 B8 step"]] == ["eager", "compile", "fused",
                                                                               "compile_fused"]
    assert [r["provider"] for r in by_case["train_step baseline B8 step"]] == ["eager", "compile"]
    assert [r["provider"] for r in by_case["loader B32 epoch"]] == list(cases.LOADER_PROVIDERS)
    assert [r["provider"] for r in by_case["block odd-B3-C5-7x13x11 fp32 full"]] == ["eager", "compile",
                                                                                   "compile_fused"]
    assert all(r["throughput"] == "–" for r in by_case["block odd-B3-C5-7x13x11 fp32 full"])
    for case in ("sca B32-C256x100x4 fp32 full", "block odd-B3-C5-7x13x11 fp32 full", "train_step at-sca-3 B8 step",
                 "train_step baseline B8 step"):
        for row in by_case[case]:
            assert row["x eager"].endswith("x") and row["x compile"].endswith("x"), row
            assert row["median"].endswith(" ms"), row
        eager = next(r for r in by_case[case] if r["provider"] == "eager")
        assert eager["x eager"] == "1.00x"
    assert all(r["throughput"].endswith(" GB/s") for r in by_case["sca B32-C256x100x4 fp32 full"])
    assert all(r["throughput"].endswith(" clips/s") for r in by_case["train_step at-sca-3 B8 step"])
    assert all(r["x eager"] == r["x compile"] == "–" for r in by_case["loader B32 epoch"])
    (tag,) = by_case["tag 360 s file"]
    assert tag["median"] == "1.5 s" and tag["throughput"].endswith("x real time")

    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({**run, "machine_info": {"fastsca": harness.environment(torch.device("cpu"))}}))
    summarise.main([str(run_json), "--out", str(tmp_path / "run.md")])
    assert (tmp_path / "run.md").read_text().splitlines()[-len(table):] == table


@pytest.mark.slow
def test_pytest_bench_ends_with_the_summary_table(tmp_path):
    """`pytest bench/` runs a fused module case on this machine (on a CPU: kernels.attention's CPU passes),
    then prints the summary table last, after pytest's short summary, and writes it to --bench-summary."""
    summary = tmp_path / "summary.md"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_bench_sca.py", "--benchmark-only", "-k", "fp32-fused-forward",
         "-p", "no:cacheprovider", f"--benchmark-storage={tmp_path}", f"--bench-summary={summary}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    markdown = summary.read_text()
    assert "| provider | case | median | x eager | x compile | throughput |" in markdown
    assert "| fused | sca B32-C256x100x4 fp32 forward |" in markdown
    tail = done.stdout[done.stdout.rindex("short test summary info"):]
    assert markdown in tail, "the summary comes after pytest's own short summary"


def test_the_step_profile_section_sets_a_fake_profile_against_the_committed_estimate():
    from bench import step_profile

    estimate = step_profile.latest_estimate(REPO / "bench/results")
    assert estimate["batch"] == step_profile.PROFILE_BATCH
    kernels = {"reference": [("sm90_xmma_wgrad_implicit_gemm_bf16", 300.0), ("triton_poi_fused_MaxPool2d_3", 9.0)],
               "fastsca": [("sm90_xmma_wgrad_implicit_gemm_bf16", 290.0), ("gate_forward_kernel", 11.0)]}
    part = step_profile.section({step: k * 3 for step, k in kernels.items()}, estimate, "H100 SXM", steps=3)
    for step in ("reference", "fastsca"):
        rows = {r["category"]: r for r in part["steps"][step]}
        estimated = {e["category"]: e for e in estimate["steps"][step]["H100 SXM breakdown"]}
        measured = {"reference": {"conv wgrad", "max-pool fwd"}, "fastsca": {"conv wgrad", "attention"}}[step]
        assert set(rows) == set(estimated) | measured
        wgrad = rows["conv wgrad"]
        assert wgrad["measured_launches"] == 1 and wgrad["estimated_us"] == estimated["conv wgrad"]["derated"]
        assert wgrad["measured_us"] == kernels[step][0][1]
    text = step_profile.section_markdown(part)
    assert f"estimate of {estimate['date']} (H100 SXM, derated)" in text and "| fastsca: category |" in text
