"""`python -m bench.summarise RUN.json [--out FILE.md] [--runtime-s S]`: markdown of a pytest-benchmark run.

Turns the JSON of `pytest bench/ --benchmark-only --benchmark-json=RUN.json` into the same tables as
`python -m bench.gpu_report` (ratios against eager and compiled references, GB/s, clips/s, memory),
and lists the grid's cases the run skipped with their reasons (bench/cases.py's skip_reason). It ends
with the one summary table that `pytest bench/` itself prints last (bench/conftest.py): a row per
provider and case, its median, its speed-up over eager and over torch.compile of the reference on the
same case and mode, and its throughput.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from bench import cases, gpu_report

SUMMARY_COLUMNS = ("provider", "case", "median", "x eager", "x compile", "throughput")
PROVIDER_ORDER = tuple(dict.fromkeys((*cases.SCA_PROVIDERS, *cases.TRAIN_PROVIDERS, *cases.LOADER_PROVIDERS)))
"""Row order within a case: the references (eager, compile) first, then the fused providers."""
SUITE_ORDER = ("sca", *cases.PASSES, "block", "train_step", "loader", "tag")


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


def session_run(benchmarks: list) -> dict:
    """What `--benchmark-json` would write (without the raw timings), from pytest-benchmark's live
    session (`config._benchmarksession.benchmarks`); a benchmark that never ran has empty stats."""
    return {"benchmarks": [bench.as_dict(include_data=False) for bench in benchmarks if bench]}


def skipped_records(records: list[dict], env: cases.BenchEnv) -> list[dict]:
    """The grid's cases absent from the run, with the reason they skip in `env`."""
    ran = {r.get("id") for r in records}   # a benchmark outside the grid (tag) has no case id
    out = []
    for case in cases.all_cases(env):
        if case.id not in ran:
            reason = cases.skip_reason(case, env) or "not run (deselected or failed)"
            out.append({**case.describe(), "status": "skipped", "reason": reason})
    return out


def summarise(run: dict, runtime_s: float | None) -> dict:
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


def _case_label(record: dict) -> str:
    if record.get("shape"):
        b, c, t, f = record["shape"]
        where = f"B{b}-C{c}x{t}x{f}"
    elif record.get("block"):
        where = record["block"]
    elif record.get("model"):
        where = f"{record['model']} B{record['batch']}"
    elif record.get("batch"):
        where = f"B{record['batch']}"
    else:
        where = ""
    return " ".join(str(part) for part in (record["suite"], where, record.get("dtype"), record["mode"]) if part)


def _number(value: float) -> str:
    """Three significant figures, without the exponent .3g gives from 1000 on (a GPU's GB/s)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _median(ms: float) -> str:
    return f"{_number(ms / 1e3)} s" if ms >= 1e3 else f"{_number(ms)} ms"


def _speedup(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _throughput(record: dict) -> str:
    """GB/s over the minimal bytes (kernels, module), clips/s (training step, loader), or how many
    times real time a file was tagged."""
    if record.get("gbps") is not None:
        return f"{_number(record['gbps'])} GB/s"
    if record.get("clips_per_s") is not None:
        return f"{_number(record['clips_per_s'])} clips/s"
    if record.get("audio_seconds"):
        return f"{_number(record['audio_seconds'] / (record['time_ms'] / 1e3))}x real time"
    return "–"


def summary_table(records: list[dict]) -> list[str]:
    """The summary's markdown lines: the providers of one case and mode next to each other, cases in the
    order they ran within each suite; speed-ups are over eager and torch.compile of the same case."""
    ran = [r for r in records if r["status"] == "ok"]
    gpu_report.derive(ran, None)
    first_seen: dict[tuple, int] = {}
    for index, record in enumerate(ran):
        first_seen.setdefault(gpu_report.comparison_key(record), index)

    def order(record: dict) -> tuple:
        suite = SUITE_ORDER.index(record["suite"]) if record["suite"] in SUITE_ORDER else len(SUITE_ORDER)
        provider = record["provider"]
        rank = PROVIDER_ORDER.index(provider) if provider in PROVIDER_ORDER else len(PROVIDER_ORDER)
        return suite, first_seen[gpu_report.comparison_key(record)], rank

    rows = [[r["provider"], _case_label(r), _median(r["time_ms"]), _speedup(r.get("vs_eager")),
             _speedup(r.get("vs_compile")), _throughput(r)] for r in sorted(ran, key=order)]
    return ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def render_summary(run: dict, environment: dict, elapsed_s: float | None = None) -> str:
    """The markdown `pytest bench/` prints last: a heading with the machine, then the one table."""
    records = records_from_pytest(run)
    timed = f"; {len(records)} cases in {elapsed_s:.0f} s" if elapsed_s is not None else ""
    head = (f"# fastsca benchmark summary: {environment['device']}, {environment['date']}\n\n"
            f"torch {environment['torch']}, triton {environment['triton']}, {environment['cpu_count']} CPUs, "
            f"{environment['torch_threads']} torch thread(s), load average {environment['load_average']}{timed}. "
            f"median: of pytest-benchmark's rounds; x eager, x compile: the median of the eager reference, or of "
            f"torch.compile of it, over this row's (same case and mode); GB/s: over the minimal bytes "
            f"(bench/cases.py).\n\n")
    return head + "\n".join(summary_table(records)) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.summarise", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="JSON written by pytest --benchmark-json")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    parser.add_argument("--runtime-s", type=float, default=None, help="wall time of the pytest run, for the header")
    parser.add_argument("--notes", default=None, help="a markdown paragraph appended under '## Notes'")
    args = parser.parse_args(argv)
    run = json.loads(Path(args.run).read_text())
    markdown = gpu_report.render_markdown(summarise(run, args.runtime_s))
    if args.notes:
        markdown += f"\n## Notes\n\n{args.notes.strip()}\n"
    markdown += "\n## Summary\n\n" + "\n".join(summary_table(records_from_pytest(run))) + "\n"
    if args.out:
        Path(args.out).write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
