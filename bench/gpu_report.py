"""`python -m bench.gpu_report [--cpu-smoke] [--out-dir bench/results] [--budget-s 480]`: the whole grid in one call.

On a GPU machine (one call of at most 9 minutes on an H100) it measures the copy-bandwidth ceiling,
checks fastsca's fused model against the reference in one training step there (bench/fused_check.py), profiles
train.run's step of both models at batch 256 with torch.profiler by bench.whole_step's categories and
sets it against that count's newest estimate (bench/step_profile.py; `--no-step-profile` skips it), then runs the cases of bench/cases.py (the ones the pytest suites run, prepared by the same code and
timed with CUDA events, median of N after warm-up): the SCA module at at-sca-3's maps with batch 256
first (the issue's targets), then the whole at-sca-3 training step at batch 256 (bf16, channels_last,
training-mode BatchNorm, AdamW) for plain torch.compile of the reference against fastsca's, each with
and without CUDA graphs (mode reduce-overhead), then one residual block's forward + backward at at-sca-3's
blocks 1, 2, 4 and 7 at batch 256 (a table per block), then the other training steps (clips/s and peak
memory), the blocks at batch 64 and under max-autotune, the loader, the rest of the module grid and the
three forward passes. Cases that would start after the time budget are recorded as skipped. It writes `<out-dir>/<date>-<device>.json` and `.md` after every case
(a cut-off run still leaves its numbers) and prints the markdown at the end.

The targets, checked in bf16 and in fp32 on at-sca-3's attention maps under the time-freq pooling plan
(blocks 5-7 at 100x4 with 256/512/512 channels) at batch 256, for the fused module (`fused`, and
`fused_compile` as training runs it): forward and backward each at >= 85% of the measured copy
bandwidth over their minimal bytes (bench/cases.py: 4|F| forward, 5|F| backward), >= 3x the eager
reference module and >= 1.5x torch.compile of it; per map and for the three blocks together (times
and bytes summed). It needs only torch and triton: the loader cases skip, with the reason, where DALI
or librosa is missing, and nothing else outside the repository is imported.

`--cpu-smoke` runs a tiny version of every case on the CPU (the fused ones through the ops' CPU
reference) to exercise these code paths where there is no GPU.
"""
import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench import cases, fused_check, harness, step_profile
from bench.cases import BenchEnv, Case

# The copy-bandwidth buffer: 2 GiB read + 2 GiB written on a GPU, ~80x the H100's L2.
COPY_BYTES = {"gpu": 2 * 2 ** 30, "cpu": 256 * 2 ** 20, "smoke": 16 * 2 ** 20}
# Default budget for the cases: 8 minutes, which leaves the 9-minute call a minute for the start-up,
# the copy-bandwidth run and writing the report.
DEFAULT_BUDGET_S = 480.0
# Seconds of budget a case needs left to start. A compiled training step compiles the whole model,
# forward and backward (about a minute or two; under max-autotune it benchmarks kernel variants, several
# minutes); a compiled module, op or block compiles once per map (a block under max-autotune benchmarks its
# three convolutions' variants forward and backward: not yet timed on a GPU, guessed at a third of the step's).
START_GUARD_S = {"train_compile": 150.0, "train_autotune": 360.0, "block_autotune": 120.0, "compile": 40.0,
                 "loader": 60.0, "other": 5.0}
TARGET_COPY_FRACTION, TARGET_VS_EAGER, TARGET_VS_COMPILE = 0.85, 3.0, 1.5
TARGET_PROVIDERS = ("fused", "fused_compile")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__.split("\n\n")[1])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on the CPU, every case: exercises the report's code paths")
    parser.add_argument("--out-dir", default="bench/results", help="where the .json and .md go")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds after which no further case starts (default %(default)s)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--data-dir", default=None,
                        help="folder for the loader's generated HDF5 set (default: a temporary folder, removed after)")
    parser.add_argument("--step-profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile train.run's step of both models by category against bench.whole_step's "
                             "estimate, before the grid (CUDA only; default on)")
    parser.add_argument("--suites", default=None,
                        help="comma-separated suites to run (passes, sca, block, train_step, loader, or a pass "
                             "name); default all")
    return parser.parse_args(argv)


def priority(case: Case, env: BenchEnv) -> int:
    """Run order: what the targets need first, then what a tight budget can best spare last."""
    if cases.is_target(case, env):
        return 0
    autotune = case.provider in cases.AUTOTUNE_PROVIDERS
    if case.suite == "train_step":   # the whole step, plain torch.compile vs fastsca, with and without CUDA graphs
        quick = case.provider in cases.COMPILED_PROVIDERS and not autotune
        return 1 if case.model == cases.TARGET_PRESET and quick else 3
    if case.suite == "block":        # the fused block against plain torch.compile: batch 256 first, max-autotune last
        return 2 if case.batch == cases.BLOCK_AUTOTUNE_BATCH and not autotune else 4
    if case.suite == "loader":
        return 5
    if case.suite == "sca":
        return 6
    late = case.provider == "compile"
    return (7 if case.batch == max(cases.BATCHES) else 9) + late


def start_guard(case: Case) -> float:
    if case.suite == "train_step" and case.provider in cases.AUTOTUNE_PROVIDERS:
        return START_GUARD_S["train_autotune"]
    if case.suite == "block" and case.provider in cases.AUTOTUNE_PROVIDERS:
        return START_GUARD_S["block_autotune"]
    if case.suite == "train_step" and case.provider in cases.COMPILED_PROVIDERS:
        return START_GUARD_S["train_compile"]
    if case.provider in cases.COMPILED_PROVIDERS:
        return START_GUARD_S["compile"]
    if case.suite == "loader":
        return START_GUARD_S["loader"]
    return START_GUARD_S["other"]


def selected(case: Case, suites: set[str] | None) -> bool:
    if suites is None:
        return True
    return case.suite in suites or ("passes" in suites and case.suite in cases.PASSES)


def run_case(case: Case, env: BenchEnv) -> dict:
    """Prepare, warm up and time one case (bench.harness.measure); errors are recorded, not raised."""
    record = {**case.describe(), "status": "ok"}
    reason = cases.skip_reason(case, env)
    if reason:
        return {**record, "status": "skipped", "reason": reason}
    start = time.perf_counter()
    try:
        with cases.prepare(case, env) as prepared:
            result = harness.measure(prepared)
            record.update(prepared.info)
            record.update(harness.figures(prepared, result.median_s, result.peak_mem_bytes,
                                          result.peak_mem_delta_bytes))
            record.update(min_ms=result.min_s * 1e3, reps=result.reps)
    except Exception as error:  # noqa: BLE001  (one broken case must not lose the others' numbers)
        first_line = str(error).splitlines()[0] if str(error) else ""
        record.update(status="error", reason=f"{type(error).__name__}: {first_line}",
                      traceback=traceback.format_exc(limit=8))
    record["wall_s"] = round(time.perf_counter() - start, 2)
    if env.cuda:
        try:
            torch.cuda.empty_cache()
        except RuntimeError:   # a sticky CUDA error (e.g. an illegal address) already recorded above
            pass
    return record


def comparison_key(record: dict) -> tuple:
    """What makes providers comparable: suite, map, block or model and batch, mode."""
    return (record["suite"], tuple(record.get("shape", ())), record.get("block"), record.get("dtype"),
            record.get("model"), record.get("batch"), record["mode"])


def derive(records: list[dict], copy_gbps: float | None) -> None:
    """Add % of copy bandwidth and speed-ups over the eager and compiled references, in place."""
    times = {(comparison_key(r), r["provider"]): r["time_ms"] for r in records if r["status"] == "ok"}
    for r in records:
        if r["status"] != "ok":
            continue
        if copy_gbps and r.get("gbps") is not None:
            r["pct_of_copy"] = 100 * r["gbps"] / copy_gbps
        for reference in ("eager", "compile"):
            base = times.get((comparison_key(r), reference))
            if base and r["time_ms"]:
                r[f"vs_{reference}"] = base / r["time_ms"]


def targets(records: list[dict], copy_gbps: float | None, env: BenchEnv) -> list[dict]:
    """The targets per dtype, fused provider and mode: per distinct at-sca-3 map (time-freq plan) at batch
    256, and for its three attention blocks together (blocks 6 and 7 share one map: it counts twice)."""
    ok = {(tuple(r["shape"]), r.get("dtype"), r["provider"], r["mode"]): r for r in records
          if r["status"] == "ok" and r["suite"] == "sca" and r.get("shape")}
    maps = [tuple(s.dims) for s in cases.target_maps(env)]
    blocks = cases.target_blocks(env)
    rows = []
    for dtype, provider, mode in itertools.product(env.dtypes, TARGET_PROVIDERS, ("forward", "backward")):
        groups = [(f"B{m[0]}-C{m[1]}x{m[2]}x{m[3]}", [m]) for m in maps]
        if len(blocks) > 1:
            groups.append((f"{cases.TARGET_PRESET} ({len(blocks)} blocks)", blocks))
        for label, group in groups:
            row = {"dtype": dtype, "provider": provider, "mode": mode, "map": label}
            needed = [(m, p) for m in group for p in (provider, "eager", "compile")]
            if any((m, dtype, p, mode) not in ok for m, p in needed) or not copy_gbps:
                rows.append({**row, "status": "not measured"})
                continue
            t = {p: sum(ok[(m, dtype, p, mode)]["time_ms"] for m in group) for p in (provider, "eager", "compile")}
            nbytes = sum(ok[(m, dtype, provider, mode)]["minimal_bytes"] for m in group)
            fraction = nbytes / (t[provider] / 1e3) / 1e9 / copy_gbps
            row.update(gbps=nbytes / (t[provider] / 1e3) / 1e9, pct_of_copy=100 * fraction,
                       vs_eager=t["eager"] / t[provider], vs_compile=t["compile"] / t[provider])
            row.update(pass_bandwidth=fraction >= TARGET_COPY_FRACTION,
                       pass_vs_eager=row["vs_eager"] >= TARGET_VS_EAGER,
                       pass_vs_compile=row["vs_compile"] >= TARGET_VS_COMPILE)
            passed = row["pass_bandwidth"] and row["pass_vs_eager"] and row["pass_vs_compile"]
            row["status"] = "pass" if passed else "fail"
            rows.append(row)
    return rows


def train_memory(records: list[dict]) -> list[dict]:
    """Peak memory and clips/s of a training step, fused against reference, per model and compile mode."""
    rows = []
    steps = {(r["model"], r["provider"]): r for r in records if r["suite"] == "train_step" and r["status"] == "ok"}
    for model in cases.TRAIN_MODELS:
        for reference, fused in (("eager", "fused"), ("compile", "compile_fused"),
                                 ("compile_cudagraphs", "compile_fused_cudagraphs"),
                                 ("compile_max_autotune", "compile_fused")):
            ref, fus = steps.get((model, reference)), steps.get((model, fused))
            if ref is None:
                continue
            row = {"model": model, "reference": reference, "fused": fused,
                   "reference_peak_mb": ref.get("peak_mem_mb"), "reference_clips_per_s": ref.get("clips_per_s")}
            if fus is not None:
                row.update(fused_peak_mb=fus.get("peak_mem_mb"), fused_clips_per_s=fus.get("clips_per_s"))
            rows.append(row)
    return rows


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return ["None measured in this run (see the skipped cases)."]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _environment_and_targets(report: dict) -> list[str]:
    """The report's opening: the environment, the copy-bandwidth ceiling and the SCA module's targets."""
    env, copy = report["environment"], report.get("copy_bandwidth") or {}
    lines = [f"# fastsca benchmarks: {env['device']}, {env['date']}", ""]
    lines += _table(["", ""], [["device", env["device"]], ["mode", report["mode"]], ["torch", env["torch"]],
                               ["triton", env["triton"]], ["DALI", env["dali"] or "not installed"],
                               ["CUDA", env["cuda"]], ["cuDNN", env["cudnn"]], ["python", env["python"]],
                               ["CPUs / load average", f"{env['cpu_count']} / {env.get('load_average')}"],
                               ["compile backend", report["compile_backend"]],
                               ["elapsed / budget", f"{report['elapsed_s']:.0f} s / {report['budget_s']:.0f} s"]])
    lines += ["", "## Copy-bandwidth ceiling", ""]
    lines += [f"`dst.copy_(src)` of {copy.get('bytes_copied', 0) / 2 ** 30:.2f} GiB: {_fmt(copy.get('time_ms'))} ms, "
              f"**{_fmt(copy.get('gbps'), '.1f')} GB/s** (bytes read + written)." if copy else "not measured"]
    check = report.get("fused_check")
    lines += ["", "## Fused against reference on this device", "",
              fused_check.markdown(check) + "." if check else "not checked"]
    lines += ["", f"## Targets: SCA module on {cases.TARGET_PRESET}'s maps ({cases.TARGET_PLAN} plan), "
                  f"batch {cases.TARGET_BATCH}", ""]
    measured = [t for t in report["targets"] if t["status"] != "not measured"]
    if measured:
        lines += [f"Pass: >= {TARGET_COPY_FRACTION:.0%} of copy bandwidth over the minimal bytes, "
                  f">= {TARGET_VS_EAGER:g}x eager, >= {TARGET_VS_COMPILE:g}x torch.compile of the reference module.",
                  ""]
        lines += _table(["dtype", "provider", "mode", "map", "GB/s", "% of copy", "x eager", "x compile", "bandwidth",
                         "vs eager", "vs compile", "result"],
                        [[t.get("dtype"), t["provider"], t["mode"], t["map"], t.get("gbps"), t.get("pct_of_copy"), t.get("vs_eager"),
                          t.get("vs_compile"), t.get("pass_bandwidth"), t.get("pass_vs_eager"),
                          t.get("pass_vs_compile"), t["status"]] for t in report["targets"]])
    else:
        lines += ["Not measured in this run (they need the fused module on CUDA, the references and the copy "
                  "bandwidth at batch 256)."]

    return lines


def _failures_and_profile(report: dict) -> list[str]:
    """The report's closing: the step profiled by category, and the failed and skipped cases."""
    records, lines = report["cases"], []
    if report.get("step_profile", {}).get("error"):
        lines += ["", f"## train.run's step by category: failed ({report['step_profile']['error']})"]
    elif report.get("step_profile"):
        lines += ["", f"## train.run's step by category, batch {step_profile.PROFILE_BATCH}", ""]
        lines += [step_profile.section_markdown(report["step_profile"])]
    failed = [r for r in records if r["status"] == "error"]
    if failed:
        lines += ["", "## Failed cases", ""]
        lines += _table(["case", "error"], [[r["id"], r["reason"]] for r in failed])
    skipped: dict[str, list[dict]] = {}
    for r in records:
        if r["status"] == "skipped":
            skipped.setdefault(r["reason"], []).append(r)
    if skipped:
        lines += ["", "## Skipped cases", ""]
        lines += _table(["cases", "suites", "reason"],
                        [[len(rs), ", ".join(dict.fromkeys(r["suite"] for r in rs)), reason]
                         for reason, rs in skipped.items()])
    return lines


def block_tables(records: list[dict]) -> list[str]:
    """The block suite's section: one table per block shape, batch and dtype, its providers in BLOCK_PROVIDERS'
    order with the time of one forward + backward and the speed-up over torch.compile of the reference block."""
    lines = ["", "## Residual block (forward + backward, training-mode BatchNorm)", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["block"], r.get("dtype")), []).append(r)
    if not groups:
        return lines + _table([], [])
    lines += ["`compile`: torch.compile of the reference block; `compile_fused`: the block built with `fused=True` "
              "(its attention fused too), compiled, as train.run runs it. No bytes floor: each convolution's "
              "traffic depends on the engine the per-layer rule gives it (`python -m fastsca.describe`)."]
    for (label, dtype), rows in groups.items():
        shape = rows[0]["block_shape"]
        attention = "SCA attention" if shape["attention"] else "no attention"
        lines += ["", f"### {shape['name']}: {shape['in_channels']}->{shape['out_channels']} channels on "
                      f"{shape['time']}x{shape['freq']}, {attention}, pool {shape['pool'][0]}x{shape['pool'][1]}; "
                      f"batch {shape['batch']}, {dtype}", ""]
        rows = sorted(rows, key=lambda r: cases.BLOCK_PROVIDERS.index(r["provider"]))
        lines += _table(["provider", "ms", "x compile", "x eager", "peak MB"],
                        [[r["provider"], r["time_ms"], r.get("vs_compile"), r.get("vs_eager"), r.get("peak_mem_mb")]
                         for r in rows])
    return lines


def render_markdown(report: dict) -> str:
    """The whole report as markdown: environment and targets, each suite's table, the step profile, failures."""
    records = report["cases"]
    lines = _environment_and_targets(report)

    def ok(suite_test):
        return [r for r in records if r["status"] == "ok" and suite_test(r["suite"])]

    kernel_header = ["map", "dtype", "mode", "provider", "ms", "GB/s", "% of copy", "x eager", "x compile", "peak MB", "+MB"]

    def kernel_row(r):
        b, c, t, f = r["shape"]
        return [f"B{b}-C{c}x{t}x{f}", r.get("dtype"), r["mode"], r["provider"], r["time_ms"], r.get("gbps"),
                r.get("pct_of_copy"), r.get("vs_eager"), r.get("vs_compile"), r.get("peak_mem_mb"),
                r.get("peak_mem_delta_mb")]

    lines += ["", "## SCA module (at-sca-3's config)", ""]
    lines += _table(kernel_header, [kernel_row(r) for r in ok(lambda s: s == "sca")])
    for suite, (op, _) in cases.PASSES.items():
        rows = ok(lambda s, suite=suite: s == suite)
        if rows:
            lines += ["", f"## `{op}`", ""] + _table(kernel_header, [kernel_row(r) for r in rows])
    lines += block_tables(ok(lambda s: s == "block"))
    lines += ["", "## Training step (forward, BCE, backward, AdamW)", ""]
    lines += _table(["model", "provider", "batch", "ms/step", "clips/s", "x eager", "peak MB"],
                    [[r["model"], r["provider"], r["batch"], r["time_ms"], r.get("clips_per_s"), r.get("vs_eager"),
                      r.get("peak_mem_mb")] for r in ok(lambda s: s == "train_step")])
    if any(m.get("reference_peak_mb") is not None for m in report["train_memory"]):
        lines += ["", "Peak memory of a training step, fused vs reference:", ""]
        lines += _table(["model", "reference", "peak MB", "clips/s", "fused", "peak MB", "clips/s"],
                        [[m["model"], m["reference"], m["reference_peak_mb"], m["reference_clips_per_s"], m["fused"],
                          m.get("fused_peak_mb"), m.get("fused_clips_per_s")] for m in report["train_memory"]])
    lines += ["", "## Loader (2 workers each)", ""]
    lines += _table(["provider", "batch", "clips/epoch", "s/epoch", "clips/s"],
                    [[r["provider"], r["batch"], r.get("clips_per_epoch"), r["time_ms"] / 1e3, r.get("clips_per_s")]
                     for r in ok(lambda s: s == "loader")])
    lines += _failures_and_profile(report)
    return "\n".join(lines) + "\n"


def output_stem(env: dict, smoke: bool, device: torch.device) -> str:
    if smoke:
        name = "cpu-smoke"
    elif device.type == "cuda":
        name = harness.slug(env["device"])
    else:   # the CPU run of this report; <date>-cpu-Ncore.md is the pytest-benchmark summary (bench.summarise)
        name = f"cpu-{env['cpu_count']}core-report"
    return f"{env['date']}-{name}"


def profile_step(device_name: str, steps: int = 5) -> dict:
    """bench/step_profile.py's measured-against-estimated section for both steps; an error is recorded, not raised."""
    gpu = "H200 SXM" if "H200" in device_name else "H100 SXM"
    try:
        profiled = {step: step_profile.measure(step, step_profile.PROFILE_BATCH, steps) for step in ("reference",
                                                                                                     "fastsca")}
        estimate = step_profile.latest_estimate(Path(__file__).parent / "results")
        return step_profile.section(profiled, estimate, gpu, steps)
    except Exception as error:  # noqa: BLE001  (the grid still runs)
        print(f"step profile failed: {type(error).__name__}: {error}", flush=True)
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}


def write(report: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    started = time.perf_counter()
    args = parse_args(argv)
    harness.configure_dynamo()
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="fastsca-bench-"))
    env = BenchEnv.detect(smoke=args.cpu_smoke, compile_backend=args.compile_backend, data_dir=data_dir)
    if args.cpu_smoke:
        env = BenchEnv(torch.device("cpu"), smoke=True, compile_backend=args.compile_backend, data_dir=data_dir)
    harness.configure_threads(env.device)
    info = harness.environment(env.device)
    suites = set(args.suites.split(",")) if args.suites else None
    report = {"environment": info, "mode": env.scale + ("" if env.smoke or env.cuda else " (no GPU)"),
              "compile_backend": env.compile_backend, "budget_s": args.budget_s, "elapsed_s": 0.0,
              "copy_bandwidth": None, "targets": [], "train_memory": [], "cases": []}
    stem = output_stem(info, env.smoke, env.device)
    out_dir = Path(args.out_dir)

    def save() -> tuple[Path, Path]:
        report["elapsed_s"] = time.perf_counter() - started
        copy_gbps = (report["copy_bandwidth"] or {}).get("gbps")
        derive(report["cases"], copy_gbps)
        report["targets"] = targets(report["cases"], copy_gbps, env)
        report["train_memory"] = train_memory(report["cases"])
        return write(report, out_dir, stem)

    print(f"bench.gpu_report: {info['device']}, torch {info['torch']}, triton {info['triton']}, "
          f"DALI {info['dali'] or 'not installed'}; budget {args.budget_s:.0f} s", flush=True)
    try:
        report["copy_bandwidth"] = harness.copy_bandwidth(env.device, COPY_BYTES[env.scale])
        print(f"copy bandwidth: {report['copy_bandwidth']['gbps']:.1f} GB/s", flush=True)
        report["fused_check"] = fused_check.check(env.device, env.smoke)
        print(fused_check.markdown(report["fused_check"]), flush=True)
        save()
        if args.step_profile and env.cuda:
            report["step_profile"] = profile_step(info["device"])
            save()
        grid = sorted((c for c in cases.all_cases(env) if selected(c, suites)), key=lambda case: priority(case, env))
        for index, case in enumerate(grid):
            elapsed = time.perf_counter() - started
            if elapsed + start_guard(case) > args.budget_s:
                record = {**case.describe(), "status": "skipped",
                          "reason": f"time budget: less than the {start_guard(case):.0f} s it needs was left of "
                                    f"--budget-s {args.budget_s:.0f}"}
            else:
                record = run_case(case, env)
            report["cases"].append(record)
            shown = (f"{record.get('time_ms', 0):9.3f} ms" if record["status"] == "ok"
                     else f"{record['status']}: {record['reason']}")
            print(f"[{index + 1}/{len(grid)} {elapsed:5.0f}s] {case.id}: {shown}", flush=True)
            save()
    finally:
        paths = save()
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(render_markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
