"""`python -m bench.summarize RUN.json [--out FILE.md] [--runtime-s S]`: markdown of a pytest-benchmark run.

Turns the JSON of `pytest bench/ --benchmark-only --benchmark-json=RUN.json` into the same tables as
`python -m bench.gpu_report` (ratios against eager and compiled references, GB/s, clips/s, memory),
and lists the grid's cases the run skipped with their reasons (bench/cases.py's skip_reason).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from bench import cases, gpu_report


def records_from_pytest(run: dict) -> list[dict]:
    """One gpu_report-style record per benchmark: extra_info holds the case and its figures."""
    records = []
    for bench in run["benchmarks"]:
        info = dict(bench.get("extra_info", {}))
        if "suite" not in info:
            continue
        info["status"] = "ok"
        info["time_ms"] = bench["stats"]["median"] * 1e3
        info["min_ms"] = bench["stats"]["min"] * 1e3
        info["reps"] = bench["stats"]["rounds"]
        records.append(info)
    return records


def skipped_records(records: list[dict], env: cases.BenchEnv) -> list[dict]:
    """The grid's cases absent from the run, with the reason they skip in `env`."""
    ran = {r["id"] for r in records}
    out = []
    for case in cases.all_cases(env):
        if case.id not in ran:
            reason = cases.skip_reason(case, env) or "not run (deselected or failed)"
            out.append({**case.describe(), "status": "skipped", "reason": reason})
    return out


def summarize(run: dict, runtime_s: float | None) -> dict:
    environment = run.get("machine_info", {}).get("fastsca", {})
    device = torch.device("cuda" if environment.get("device_type") == "cuda" else "cpu")
    env = cases.BenchEnv(device)
    records = records_from_pytest(run)
    gpu_report.derive(records, None)
    report = {"environment": environment, "mode": f"pytest bench/ --benchmark-only ({env.scale})",
              "compile_backend": "inductor", "budget_s": 600.0, "elapsed_s": runtime_s or 0.0,
              "copy_bandwidth": None, "cases": records + skipped_records(records, env)}
    report["targets"] = gpu_report.targets(report["cases"], None, env)
    report["train_memory"] = gpu_report.train_memory(report["cases"])
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="JSON written by pytest --benchmark-json")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    parser.add_argument("--runtime-s", type=float, default=None, help="wall time of the pytest run, for the header")
    parser.add_argument("--notes", default=None, help="a markdown paragraph appended under '## Notes'")
    args = parser.parse_args(argv)
    markdown = gpu_report.render_markdown(summarize(json.loads(Path(args.run).read_text()), args.runtime_s))
    if args.notes:
        markdown += f"\n## Notes\n\n{args.notes.strip()}\n"
    if args.out:
        Path(args.out).write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
