"""`python -m bench.static_report [--arch 90] [--batch 256] [--out-dir bench/results]`: the GPU code, seen with no GPU.

For at-sca-3, at-csa-3 and at-cps-3 under both pooling plans (fastsca/config.py POOLING_PLANS), in
bf16 and fp32, NCHW and channels_last, it runs the attention module of every attention block forward
and backward on CPU tensors of the real shapes at batch 256, through the project's own ops and host
launchers, recording each kernel launch instead of running it (bench/launches.py). Every distinct
specialisation is compiled for sm_<arch> with the Triton wheel's ptxas (bench/gpu_code.py) and reported:
registers, spills, the widest global load and store, the narrowest access to an F-sized tensor,
atomics, and programs against the H100's 132 SMs. Per module, forward and backward: the F-sized bytes
moved, in units of |F| (the bytes of the block's feature map), counted from the launches (each F-sized
tensor a kernel loads or stores, once per pass a program makes over it) and from any aten op that reads
or writes an F-sized tensor, against the floor (FLOORS) and as roofline time at 3.35 TB/s.

Writes `<out-dir>/<date>-sm<arch>-static-b<batch>.{json,md}` and prints the markdown.
"""
import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton

import kernels  # noqa: F401  (the ops must be registered before the modules run)
from bench import gpu_code
from bench.launches import Launch, Recording, is_f_sized, record
from fastsca.attention import build_attention
from fastsca.config import POOLING_PLANS, ModelConfig

PRESETS = ("at-sca-3", "at-csa-3", "at-cps-3")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
H100_SMS = 132
"""Streaming multiprocessors of an H100 SXM: a grid of fewer programs leaves SMs idle."""
HBM_BYTES_PER_S = 3.35e12
"""H100 SXM HBM3 bandwidth (datasheet); the roofline time is bytes / this."""
H200_BYTES_PER_S = 4.8e12
"""H200 SXM HBM3e bandwidth (datasheet), the GPU the project's lent machines carry (same 132 SMs)."""
FLOORS = {"sca": (4, 5), "csa": (4, 5), "cps": (4, 4)}
"""(forward, backward) F-sized traffic floor in |F| (docs/kernels.md derives them). Forward: the two
descriptors and the gate each read F once, the gate writes F'' once (C//S's independent S and Z could
share one read, but the issue holds it to 3 reads + 1 write too). Backward: pass 1 reads dF'' and F
(the gate's logit gradients); SCA needs F once more for the squeeze's logit gradient (its dZ comes
from pass 1's channel gradient), CSA for the channel weight's gradient through the channel pool (its dS
comes from pass 1's spatial gradient); the last pass reads dF'' and writes dF with every term summed
in registers. C//S has no second read: 2 + 2."""
SMALL_GRID_FRACTION = 1.0
"""A grid below this many waves of one program per SM is flagged (latency-bound)."""


@dataclass(frozen=True)
class ModuleCase:
    """One attention module traced: an attention block of a preset under a pooling plan."""

    preset: str
    plan: str
    blocks: tuple[int, ...]
    """1-based blocks whose attention sees this map (blocks 6 and 7 share one under time-freq)."""
    channels: int
    time: int
    freq: int
    dtype: str
    layout: str

    @property
    def arrangement(self) -> str:
        return ModelConfig.from_name(self.preset).arrangement

    @property
    def label(self) -> str:
        return f"{self.preset} {self.plan} block {'+'.join(map(str, self.blocks))} C{self.channels}x{self.time}x{self.freq}"


def module_cases(presets=PRESETS, plans=tuple(POOLING_PLANS), dtypes=tuple(DTYPES),
                 layouts=tuple(LAYOUTS), extra_maps: tuple[tuple[int, int, int], ...] = ()) -> list[ModuleCase]:
    """Every distinct attention map of the presets under each plan, in each dtype and layout, and any
    extra (C, T, F) maps (plan 'extra': an odd N checks the masked tails compile)."""
    out = [ModuleCase(preset, "extra", (), c, t, f, d, lay)
           for preset in presets for (c, t, f) in extra_maps for d in dtypes for lay in layouts]
    for preset in presets:
        for plan in plans:
            config = ModelConfig.from_name(preset, pools=POOLING_PLANS[plan])
            sizes = config.block_input_sizes()
            maps: dict[tuple[int, int, int], list[int]] = {}
            for block in config.attention_blocks:
                maps.setdefault((config.channels[block], *sizes[block]), []).append(block + 1)
            for (c, t, f), blocks in maps.items():
                out += [ModuleCase(preset, plan, tuple(blocks), c, t, f, d, lay) for d in dtypes for lay in layouts]
    return out


def trace_module(case: ModuleCase, batch: int) -> tuple[Recording, torch.Tensor]:
    """Forward and backward of the case's fused attention module on CPU tensors, launches recorded.

    bf16 runs under CPU bf16 autocast, as training runs under CUDA autocast: the convs and the SE MLP
    produce bf16 logits, the map arrives in bf16; the module's parameters stay fp32."""
    config = ModelConfig.from_name(case.preset)
    module = build_attention(arrangement=config.arrangement, channels=case.channels, time_steps=case.time,
                             freq_bins=case.freq, use_global=config.spatial_global, use_local=config.spatial_local,
                             rd_ratio=config.rd_ratio, global_mid_channels=config.global_mid_channels,
                             global_kernel_size=config.global_kernel_size, fused=True)
    dtype = DTYPES[case.dtype]
    x = torch.empty((batch, case.channels, case.time, case.freq), dtype=dtype,
                    memory_format=LAYOUTS[case.layout]).requires_grad_()
    params = list(module.parameters())
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        with record(x.numel()) as recording:
            out = module(x)
            recording.phase = "backward"
            torch.autograd.grad(out, [x, *params], torch.empty_like(out), allow_unused=True)
    return recording, x


def launch_traffic(launch: Launch, code: gpu_code.KernelCode, f_numel: int) -> dict:
    """Bytes this launch moves: F-sized tensors (each pass over a tensor loaded or stored) and the rest."""
    f_bytes = other = 0
    f_widths = []
    for _, tensor, access, moved in gpu_code.pointer_traffic(launch, code):
        if is_f_sized(tensor, f_numel):
            f_bytes += moved
            f_widths += [bits // 8 for bits in access.load_bits + access.store_bits]
        else:
            other += moved
    return {"f_bytes": f_bytes, "other_bytes": other, "f_min_width": min(f_widths, default=None),
            "f_max_width": max(f_widths, default=None)}


def kernel_row(launch: Launch, code: gpu_code.KernelCode, traffic: dict) -> dict:
    resident = code.resident_programs()
    return {"kernel": launch.name, "variant": launch.variant(), "arch": f"sm_{code.arch}", "grid": list(launch.grid), "programs": launch.programs,
            "num_warps": code.num_warps, "registers": code.registers, "spill_bytes": code.local_bytes,
            "stack_bytes": code.stack_bytes, "shared_bytes": code.shared_bytes,
            "widest_load_bytes": code.widest_load_bytes, "widest_store_bytes": code.widest_store_bytes,
            "f_min_access_bytes": traffic["f_min_width"], "sass_loads": code.sass_loads,
            "sass_stores": code.sass_stores, "atomics": code.sass_atomics, "resident_per_sm": resident,
            "waves": launch.programs / (H100_SMS * resident) if resident else None}


def module_rows(case: ModuleCase, batch: int, arch: int, sass: bool = True) -> tuple[list[dict], list[dict]]:
    """(one row per phase of the module, one row per launch) for one traced case."""
    recording, x = trace_module(case, batch)
    f_size = x.numel() * x.element_size()
    launches, phases = [], {}
    for launch in recording.launches:
        code = gpu_code.kernel_code(launch, arch, sass)
        traffic = launch_traffic(launch, code, recording.f_numel)
        launches.append({**kernel_row(launch, code, traffic), "phase": launch.phase, "module": case.label,
                         "dtype": case.dtype, "layout": case.layout, "map": [case.channels, case.time, case.freq],
                         "f_bytes": traffic["f_bytes"], "other_bytes": traffic["other_bytes"],
                         "key": repr((gpu_code.specialisation_key(launch, arch), launch.grid, case.channels,
                                      case.time, case.freq))})
        phase = phases.setdefault(launch.phase, {"kernel_f_bytes": 0, "other_bytes": 0, "launches": 0, "aten": []})
        phase["kernel_f_bytes"] += traffic["f_bytes"]
        phase["other_bytes"] += traffic["other_bytes"]
        phase["launches"] += 1
    for op in recording.aten:
        phases.setdefault(op.phase, {"kernel_f_bytes": 0, "other_bytes": 0, "launches": 0, "aten": []})
        phases[op.phase]["aten"].append({"op": op.op, "read_bytes": op.read_bytes, "written_bytes": op.written_bytes})
    rows = []
    for index, phase in enumerate(("forward", "backward")):
        info = phases.get(phase, {"kernel_f_bytes": 0, "other_bytes": 0, "launches": 0, "aten": []})
        aten_bytes = sum(a["read_bytes"] + a["written_bytes"] for a in info["aten"])
        total = info["kernel_f_bytes"] + aten_bytes
        floor = FLOORS[case.arrangement][index]
        rows.append({"module": case.label, "preset": case.preset, "arrangement": case.arrangement, "plan": case.plan,
                     "blocks": list(case.blocks), "map": [case.channels, case.time, case.freq], "dtype": case.dtype,
                     "layout": case.layout, "phase": phase, "f_bytes": f_size, "launches": info["launches"],
                     "kernel_f_bytes": info["kernel_f_bytes"], "aten_f_bytes": aten_bytes, "batch": batch,
                     "aten_ops": sorted({a["op"] for a in info["aten"]}), "other_bytes": info["other_bytes"],
                     "traffic_f": total / f_size, "floor_f": floor, "at_floor": total == floor * f_size,
                     "roofline_us": (total + info["other_bytes"]) / HBM_BYTES_PER_S * 1e6,
                     "roofline_h200_us": (total + info["other_bytes"]) / H200_BYTES_PER_S * 1e6,
                     "floor_roofline_us": floor * f_size / HBM_BYTES_PER_S * 1e6})
    return rows, launches


def distinct_kernels(launches: list[dict]) -> list[dict]:
    """One row per compiled specialisation, grid and map, with the modules that launch it: `dtype` and
    `layout` list the modules' (a kernel on S or Z in fp32 serves bf16 and fp32 modules alike)."""
    rows: dict[str, dict] = {}
    for launch in launches:
        row = rows.setdefault(launch["key"], {k: v for k, v in launch.items()
                                               if k not in ("key", "module", "phase", "f_bytes", "other_bytes")}
                              | {"uses": [], "used_by": []})
        use = [launch["module"], launch["dtype"], launch["layout"]]
        if use not in row["uses"]:
            row["uses"].append(use)
        row["dtype"] = ", ".join(sorted({u[1] for u in row["uses"]}))
        row["layout"] = ", ".join(sorted({u[2] for u in row["uses"]}, reverse=True))
        row["used_by"].append(f"{launch['module']} {launch['dtype']} {launch['layout']} {launch['phase']}")
    return sorted(rows.values(), key=lambda r: (r["kernel"], r["variant"], r["dtype"], r["layout"],
                                                -r["map"][1] * r["map"][2], r["map"][0]))


def summary(modules: list[dict], kernels_: list[dict]) -> list[dict]:
    """Per preset and plan (all its attention blocks, bf16 and fp32 apart): traffic against the floor,
    roofline time at batch 256, and the worst kernel figures."""
    rows = []
    keys = dict.fromkeys((m["preset"], m["plan"], m["dtype"]) for m in modules)
    for preset, plan, dtype in keys:
        mine = [m for m in modules if (m["preset"], m["plan"], m["dtype"]) == (preset, plan, dtype)]
        labels = {m["module"] for m in mine}
        ks = [k for k in kernels_ if any(module in labels and d == dtype for module, d, _ in k["uses"])]
        row = {"preset": preset, "plan": plan, "dtype": dtype}
        for phase in ("forward", "backward"):
            ph = [m for m in mine if m["phase"] == phase]
            for key in ("roofline_us", "roofline_h200_us"):
                worst: dict[str, float] = {}   # per block's map, the slower layout
                for m in ph:
                    worst[m["module"]] = max(worst.get(m["module"], 0.0), m[key] * max(1, len(m["blocks"])))
                row[f"{phase}_{key}"] = sum(worst.values())
            row[f"{phase}_f"] = max(m["traffic_f"] for m in ph)
            row[f"{phase}_floor_f"] = ph[0]["floor_f"]
        widths = [k["f_min_access_bytes"] for k in ks if k["f_min_access_bytes"] is not None]
        f_kernels = [k for k in ks if k["f_min_access_bytes"] is not None]
        row.update(max_registers=max((k["registers"] for k in f_kernels), default=None), spill_bytes=max(k["spill_bytes"] for k in ks),
                   f_min_access_bytes=min(widths, default=None), atomics=sum(sum(k["atomics"].values()) for k in ks),
                   min_programs=min(k["programs"] for k in ks))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ markdown

def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}×{v}" for k, v in value.items()) or "none"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def summary_table(summary_rows: list[dict], batch: int) -> list[str]:
    """The table README's Performance section shows."""
    return _table(
        ["preset", "pooling plan", "dtype", "fwd traffic / floor", "bwd traffic / floor",
         f"H100 roofline fwd + bwd (B={batch}, µs)", "H200 (µs)", "max regs (F-sized kernels)", "spills (B)", "narrowest F access (B)", "atomics",
         "fewest programs"],
        [[r["preset"], r["plan"], r["dtype"], f"{r['forward_f']:.2f} / {r['forward_floor_f']} \\|F\\|",
          f"{r['backward_f']:.2f} / {r['backward_floor_f']} \\|F\\|",
          f"{r['forward_roofline_us']:.0f} + {r['backward_roofline_us']:.0f}",
          f"{r['forward_roofline_h200_us']:.0f} + {r['backward_roofline_h200_us']:.0f}", r["max_registers"], r["spill_bytes"],
          r["f_min_access_bytes"], r["atomics"], r["min_programs"]] for r in summary_rows])


def render_markdown(report: dict) -> str:
    env, batch = report["environment"], report["batch"]
    lines = [f"# fastsca kernels compiled for {report['arch']} with no GPU, {env['date']}", "",
             f"Triton {env['triton']}, torch {env['torch']}, Python {env['python']}; batch {batch}; "
             f"`python -m bench.static_report` in {report['elapsed_s']:.0f} s. Roofline: bytes / "
             f"{HBM_BYTES_PER_S / 1e12:.2f} TB/s (H100 SXM) and / {H200_BYTES_PER_S / 1e12:.1f} TB/s (H200 SXM); "
             f"programs against {H100_SMS} SMs (both). |F| = the block's feature map in "
             f"bytes. Traffic counts each F-sized tensor a kernel loads or stores once per pass, plus aten ops on "
             f"F-sized tensors; the small tensors (S, Z, logits, weights, partial sums) are in the JSON.", ""]
    checks = report["checks"]
    lines += ["## Checks", ""]
    lines += _table(["check", "result", "where it fails"], [[c["check"], c["pass"], c["failures"]] for c in checks])
    lines += ["", "## Per preset and pooling plan (every attention block; traffic: the worst block and layout)", ""]
    lines += summary_table(report["summary"], batch)
    lines += ["", "## Modules: F-sized traffic per block, forward and backward", ""]
    lines += _table(["module", "dtype", "layout", "phase", "launches", "kernels (\\|F\\|)", "aten (\\|F\\|)",
                     "aten ops", "total (\\|F\\|)", "floor", "at floor", "roofline µs"],
                    [[m["module"], m["dtype"], m["layout"], m["phase"], m["launches"], m["kernel_f_bytes"] / m["f_bytes"],
                      m["aten_f_bytes"] / m["f_bytes"], ", ".join(m["aten_ops"]) or "–", m["traffic_f"], m["floor_f"],
                      m["at_floor"], m["roofline_us"]] for m in report["modules"]])
    lines += ["", "## Kernels: every specialisation launched", ""]
    lines += _table(["kernel", "variant", "dtype", "layout", "map C×T×F", "warps", "regs", "spills (B)", "widest load (B)",
                     "widest store (B)", "narrowest F access (B)", "atomics", "programs", "per SM", "waves"],
                    [[k["kernel"], k["variant"], k["dtype"], k["layout"], "×".join(map(str, k["map"])), k["num_warps"], k["registers"],
                      k["spill_bytes"], k["widest_load_bytes"], k["widest_store_bytes"], k["f_min_access_bytes"],
                      k["atomics"], k["programs"], k["resident_per_sm"], k["waves"]] for k in report["kernels"]])
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- checks

MAX_REGISTERS = 64
"""Issue 9's ceiling for the F-sized kernels: 64 registers keep 4 programs of 8 warps per SM."""
VECTOR_BYTES = 16
"""A 16-byte global access (LDG.E.128 / ld.global.v4.b32): the widest there is, one sector per 2 threads."""


def checks(modules: list[dict], kernels_: list[dict]) -> list[dict]:
    """The issue's static claims, each with the places it fails."""
    f_kernels = [k for k in kernels_ if k["f_min_access_bytes"] is not None]

    def where(rows, label):
        return "; ".join(sorted({label(r) for r in rows})) or "–"

    def kname(k: dict) -> str:
        return f"{k['kernel']} [{k['variant']}] {k['dtype']} {k['layout']} {'×'.join(map(str, k['map']))}"

    spills = [k for k in kernels_ if k["spill_bytes"] or k["stack_bytes"]]
    narrow = [k for k in f_kernels if k["f_min_access_bytes"] < VECTOR_BYTES]
    regs = [k for k in f_kernels if k["registers"] > MAX_REGISTERS]
    atomics = [k for k in kernels_ if k["atomics"]]
    small = [k for k in kernels_ if k["programs"] < H100_SMS]
    over = [m for m in modules if not m["at_floor"]]
    return [
        {"check": "no spills (local memory 0)", "pass": not spills, "failures": where(spills, kname)},
        {"check": f"every F-sized access {VECTOR_BYTES} bytes", "pass": not narrow,
         "failures": where(narrow, lambda k: f"{kname(k)} ({k['f_min_access_bytes']} B)")},
        {"check": f"F-sized kernels at most {MAX_REGISTERS} registers", "pass": not regs,
         "failures": where(regs, lambda k: f"{kname(k)} ({k['registers']})")},
        {"check": "no atomics", "pass": not atomics, "failures": where(atomics, kname)},
        {"check": f"every grid at least {H100_SMS} programs", "pass": not small,
         "failures": where(small, lambda k: f"{kname(k)} ({k['programs']})")},
        {"check": "module traffic exactly its floor (an undercount fails too)", "pass": not over,
         "failures": where(over, lambda m: f"{m['module']} {m['dtype']} {m['phase']} ({m['traffic_f']:.2f} vs {m['floor_f']})")},
    ]


def environment() -> dict:
    now = datetime.now(timezone.utc)
    return {"date": now.strftime("%Y-%m-%d"), "time_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "triton": triton.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "ptxas": str(gpu_code.TOOLS / "ptxas")}


def build_report(arch: int, batch: int, cases: list[ModuleCase], progress=None, sass: bool = True) -> dict:
    """Trace every case, compile what it launches, and gather the rows, checks and summary."""
    started = time.perf_counter()
    modules, launches = [], []
    for case in cases:
        rows, launched = module_rows(case, batch, arch, sass)
        modules += rows
        launches += launched
        if progress:
            progress(case)
    kernels_ = distinct_kernels(launches)
    return {"environment": environment(), "arch": f"sm_{arch}", "batch": batch,
            "elapsed_s": time.perf_counter() - started, "checks": checks(modules, kernels_),
            "summary": summary(modules, kernels_), "modules": modules, "kernels": kernels_}


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.static_report", description=__doc__.split("\n\n")[1])
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90: H100)")
    parser.add_argument("--batch", type=int, default=256, help="batch of the traced modules (default 256)")
    parser.add_argument("--out-dir", default="bench/results", help="where the .json and .md go")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: %(default)s)")
    parser.add_argument("--plans", default=",".join(POOLING_PLANS), help="comma-separated pooling plans (default: %(default)s)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated dtypes (default: %(default)s)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated layouts (default: %(default)s)")
    parser.add_argument("--extra-map", action="append", default=[], metavar="CxTxF",
                        help="also trace this map (e.g. 64x25x3 for masked tails); repeatable")
    parser.add_argument("--quiet", action="store_true", help="print only the paths written")
    args = parser.parse_args(argv)
    choices = {"--plans": (args.plans, POOLING_PLANS), "--dtypes": (args.dtypes, DTYPES),
               "--layouts": (args.layouts, LAYOUTS), "--presets": (args.presets, PRESETS)}
    for flag, (value, valid) in choices.items():
        unknown = [v for v in value.split(",") if v not in valid]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    extra = []
    for text in args.extra_map:
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
            parser.error(f"--extra-map takes CxTxF with positive sizes, e.g. 64x25x3; got {text!r}")
        extra.append(tuple(int(part) for part in parts))
    from tqdm import tqdm

    cases = module_cases(tuple(args.presets.split(",")), tuple(args.plans.split(",")), tuple(args.dtypes.split(",")),
                         tuple(args.layouts.split(",")), tuple(extra))
    with tqdm(total=len(cases), desc="trace + compile", unit="module", disable=args.quiet) as bar:
        report = build_report(args.arch, args.batch, cases, progress=lambda case: bar.update())
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['environment']['date']}-sm{args.arch}-static-b{args.batch}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1))
    markdown = render_markdown(report)
    md_path.write_text(markdown)
    if not args.quiet:
        print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path


if __name__ == "__main__":
    main(sys.argv[1:])
