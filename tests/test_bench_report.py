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
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (json_path,) = (tmp_path / "results").glob("*-cpu-smoke.json")
    (md_path,) = (tmp_path / "results").glob("*-cpu-smoke.md")
    report = json.loads(json_path.read_text())
    assert {"environment", "mode", "copy_bandwidth", "cases", "targets", "train_memory", "elapsed_s"} <= report.keys()
    assert {"date", "device", "torch", "triton", "dali", "cuda"} <= report["environment"].keys()
    assert report["copy_bandwidth"]["gbps"] > 0

    by_suite = {}
    for record in report["cases"]:
        by_suite.setdefault(record["suite"], []).append(record)
    assert {"channel_pool", "local_fc", "spatial_squeeze", "gate", "sca", "train_step", "loader"} <= by_suite.keys()
    errors = [f"{r['id']}: {r['reason']}" for r in report["cases"] if r["status"] == "error"]
    assert not errors, errors
    for suite in ("channel_pool", "local_fc", "spatial_squeeze", "gate", "sca"):
        grid = {(r["provider"], r["mode"]) for r in by_suite[suite] if r["status"] == "ok"}
        providers = {"eager", "compile", "fused"} | ({"fused_compile"} if suite == "sca" else set())
        assert grid == {(p, m) for p in providers for m in ("forward", "backward", "full")}, suite
        for record in by_suite[suite]:
            assert record["time_ms"] > 0 and record["gbps"] > 0 and record["minimal_bytes"] > 0
            assert "vs_eager" in record and "vs_compile" in record
    steps = {(r["model"], r["provider"]): r for r in by_suite["train_step"] if r["status"] == "ok"}
    assert {("at-sca-3", p) for p in ("eager", "fused", "compile", "compile_fused")} <= steps.keys()
    assert all(r["clips_per_s"] > 0 for r in steps.values())
    for record in by_suite["loader"]:   # DALI may be missing: then it must say so
        assert record["status"] == "ok" or record["reason"].startswith("DALI not installed"), record
        if record["status"] == "ok":
            assert record["clips_per_s"] > 0
    assert {t["status"] for t in report["targets"]} <= {"pass", "fail"} and report["targets"]

    markdown = md_path.read_text()
    for heading in ("# fastsca benchmarks", "## Copy-bandwidth ceiling", "## Targets", "## SCA module",
                    "## `gate`", "## Training step", "## Loader"):
        assert heading in markdown
    assert markdown in done.stdout
