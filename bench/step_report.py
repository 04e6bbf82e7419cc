"""The markdown of `python -m bench.whole_step`'s report: totals at both prices, the floors, the target, one SCA
module alone, and the breakdown of each step by category (bench/breakdown.py)."""
from bench.pricing import CONV_EFFICIENCY, GPUS, HOST_US, LAUNCH_US, MEMORY_EFFICIENCY, PRICES

STEPS = ("reference", "fastsca")
PHASES = ("front end", "forward", "loss", "non-finite check", "backward", "clipping", "optimiser")
TARGET_SPEEDUP = {256: 1.5, 64: 1.3}
"""Issue 24's targets: fastsca's train.run step at least this much faster than the fair baseline (derated), by batch
(other batches: batch 64's)."""
TARGET_BYTES_SHARE = 0.60
"""Issue 24's target: fastsca's step moves at most this share of the fair baseline's bytes."""
TARGET_DATASHEET_MS = {256: 17.0}
"""Issue 24's target for the first GPU's datasheet estimate, by batch (an H100 at batch 256: 15,000 clips/s)."""
HEADLINE_PRICE = "derated"


def _totals(report: dict) -> list[str]:
    s, batch = report["steps"], report["batch"]
    lines = ["| per step | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(s[name]) for name in STEPS) + " |")

    row("kernel launches", lambda x: f"{x['launches']}")
    for phase in PHASES:
        row(f"- {phase}", lambda x, p=phase: f"{x['launches_by_phase'].get(p, 0)}")
    for kind in ("inductor", "fastsca", "extern", "dali", "aten in fastsca op"):
        row(f"- by kind: {kind}", lambda x, k=kind: f"{x['launches_by_kind'].get(k, 0)}")
    row("GB moved", lambda x: f"{x['bytes'] / 1e9:.2f}")
    row("MB per clip", lambda x: f"{x['bytes'] / 1e6 / batch:.1f}")
    row("TFLOP (convolutions, matmuls)", lambda x: f"{x['flops'] / 1e12:.2f}")
    for gpu in GPUS:
        for price in PRICES:
            label = f"{gpu.name}: {price} ms" + (" (floor)" if price == "datasheet" else "")
            row(label, lambda x, g=gpu, p=price: f"{x[f'{g.name} {p} ms']:.2f}")
        row(f"{gpu.name}: {HEADLINE_PRICE} clips/s", lambda x, g=gpu: f"{x[f'{g.name} {HEADLINE_PRICE} clips/s']:,.0f}")
    row("spilled bytes (all kernels)", lambda x: f"{x['spills']}")
    row("kernels that did not compile", lambda x: f"{x['compile_errors']}")
    return lines


def _floors_and_target(report: dict) -> list[str]:
    s, batch = report["steps"], report["batch"]
    target = TARGET_SPEEDUP.get(batch, TARGET_SPEEDUP[64])
    lines = ["", "Floors and targets (fastsca's step against the reference's, same rules both sides):", ""]
    for gpu in GPUS:
        f = s["fastsca"]
        flop_floor = f["flops"] / gpu.bf16_flops_per_s * 1e3
        conv_floor = f["conv_bytes"] / gpu.bytes_per_s * 1e3
        ratios = {p: s["reference"][f"{gpu.name} {p} ms"] / f[f"{gpu.name} {p} ms"] for p in PRICES}
        verdict = ratios[HEADLINE_PRICE] / target
        lines.append(f"- {gpu.name}: FLOPs / peak {flop_floor:.2f} ms; convolution bytes / bandwidth {conv_floor:.2f} "
                     f"ms. Speed-up " + ", ".join(f"{p} {r:.3f}x" for p, r in ratios.items()) +
                     f"; target {target}x derated: " + ("met" if verdict >= 1 else
                     f"not met, {(1 - verdict) * 100:.1f} % short (the reference step would have to take "
                     f"{target * f[f'{gpu.name} {HEADLINE_PRICE} ms']:.2f} ms)"))
    share = s["fastsca"]["bytes"] / s["reference"]["bytes"]
    lines.append(f"- Bytes: fastsca moves {100 * share:.0f} % of the reference's; target at most "
                 f"{100 * TARGET_BYTES_SHARE:.0f} %: " + ("met" if share <= TARGET_BYTES_SHARE else "not met"))
    if batch in TARGET_DATASHEET_MS:
        gpu, wanted = GPUS[0], TARGET_DATASHEET_MS[batch]
        ms = s["fastsca"][f"{gpu.name} datasheet ms"]
        lines.append(f"- {gpu.name} datasheet: {ms:.2f} ms ({batch / ms * 1e3:,.0f} clips/s); target at most {wanted:g} "
                     f"ms: " + ("met" if ms <= wanted else f"not met, {ms - wanted:.2f} ms over"))
    lines.append(_why(report))
    return lines


BACKBONE = ("conv fwd", "conv dgrad", "conv wgrad", "BN stats", "BN apply+ReLU+add fwd", "BN/ReLU/add bwd pointwise",
            "BN bwd reductions")
"""The backbone's convolutions and BatchNorm/ReLU/add: the same work on both sides until a fused backbone."""


MEMORY_BOUND_BACKBONE = ("BN stats", "BN apply+ReLU+add fwd", "BN/ReLU/add bwd pointwise", "BN bwd reductions",
                         "block tail fwd", "block tail bwd")
"""The backbone's work between the convolutions: what a fused backbone can take out of the step (the ceiling)."""


def _why(report: dict) -> str:
    """Where the speed-up comes from and what caps it, from the breakdowns (first GPU, headline price): the three
    largest savings, the backbone's share, and the ceiling: the step with all of its work between the convolutions
    at zero (the convolutions, attention, front end, loss and optimiser as priced), and the convolution time the
    target would need with everything else as it is."""
    gpu = GPUS[0]
    ours, theirs = ({e["category"]: e[HEADLINE_PRICE] for e in report["steps"][step][f"{gpu.name} breakdown"]}
                    for step in ("fastsca", "reference"))
    saved = sorted(((theirs.get(c, 0.0) - ours.get(c, 0.0), c) for c in set(ours) | set(theirs)), reverse=True)
    total, reference = sum(ours.values()), sum(theirs.values())
    backbone = sum(ours.get(c, 0.0) for c in BACKBONE)
    between = sum(ours.get(c, 0.0) for c in MEMORY_BOUND_BACKBONE)
    convolutions = sum(ours.get(c, 0.0) for c in ("conv fwd", "conv dgrad", "conv wgrad"))
    target = TARGET_SPEEDUP.get(report["batch"], TARGET_SPEEDUP[64])
    needed = reference / target - (total - convolutions)
    return (f"- Why ({gpu.name}, {HEADLINE_PRICE}): fastsca saves " + ", ".join(
        f"{us / 1e3:.2f} ms in {c}" for us, c in saved[:3] if us > 0) + f"; the backbone's convolutions and "
        f"BatchNorm/ReLU/add are {backbone / 1e3:.1f} ms ({100 * backbone / total:.0f} % of fastsca's step).\n"
        f"- Ceiling ({gpu.name}, {HEADLINE_PRICE}): with all of the backbone's work between the convolutions "
        f"({', '.join(MEMORY_BOUND_BACKBONE)}: {between / 1e3:.2f} ms) at zero, the step would take "
        f"{(total - between) / 1e3:.2f} ms, {reference / (total - between):.3f}x; with everything else as it is, "
        f"{target}x needs the convolutions at {needed / 1e3:.2f} ms (they are priced at {convolutions / 1e3:.2f}).")


def _modules(report: dict) -> list[str]:
    lines = ["", "One SCA attention module of at-sca-3, compiled alone, forward + backward (bf16 channels_last, "
             "training mode; datasheet price):", "",
             "| map C×T×F | step | launches fwd / bwd | fastsca kernels | extern | GB | H100 µs | H200 µs |",
             "|---|---|---|---|---|---|---|---|"]
    for m in report["modules"]:
        phases, kinds = m["launches_by_phase"], m["launches_by_kind"]
        lines.append(f"| {'×'.join(map(str, m['map']))} | {m['step']} | {phases.get('forward', 0)} / "
                     f"{phases.get('backward', 0)} | {kinds.get('fastsca', 0)} | {kinds.get('extern', 0)} | "
                     f"{m['bytes'] / 1e9:.3f} | {m[f'{GPUS[0].name} ms'] * 1e3:.0f} | "
                     f"{m[f'{GPUS[1].name} ms'] * 1e3:.0f} |")
    return lines


def _breakdown(report: dict, step: str) -> list[str]:
    gpu = GPUS[0]
    entries = report["steps"][step][f"{gpu.name} breakdown"]
    total = sum(e[HEADLINE_PRICE] for e in entries)
    lines = ["", f"Where {step}'s step goes ({gpu.name}; % of the {HEADLINE_PRICE} step):", "",
             "| category | launches | GB | datasheet µs | derated µs | no-graphs µs | % of step |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['category']} | {e['launches']} | {e['bytes'] / 1e9:.2f} | {e['datasheet']:.0f} | "
                     f"{e['derated']:.0f} | {e['derated, no CUDA graphs']:.0f} | {100 * e['derated'] / total:.1f} |")
    return lines


def _fp32(report: dict) -> list[str]:
    lines = ["", "Largest fp32 stores by Triton kernels outside the optimiser (what is materialised in fp32):", "",
             "| step | kernel | phase | category | fp32 MB stored |", "|---|---|---|---|---|"]
    for step in STEPS:
        rows = [r for r in report["launches"][step] if r.get("fp32_stored") and r["category"] != "optimiser"]
        for r in sorted(rows, key=lambda r: -r["fp32_stored"])[:5]:
            lines.append(f"| {step} | {r['name']} | {r['phase']} | {r['category']} | {r['fp32_stored'] / 1e6:.1f} |")
    return lines


def markdown(report: dict) -> str:
    conv = ", ".join(f"{k} {v:.0%}" for k, v in CONV_EFFICIENCY.items())
    lines = [f"# train.run's at-sca-3 step, counted with no GPU ({report['date']})", "",
             f"Batch {report['batch']}, the `gpu` profile's model, bf16 autocast, channels_last, training-mode "
             f"BatchNorm, clip_grad_norm_ 1.0, fused AdamW; kernels compiled for sm_{report['arch']}; torch "
             f"{report['torch']}, Triton {report['triton']}; {report['elapsed_s']:.0f} s. Prices (bench/pricing.py): "
             f"datasheet = max(bytes / bandwidth, FLOPs / peak) + {LAUNCH_US} µs a launch, a floor; derated = "
             f"memory-bound work at {MEMORY_EFFICIENCY:.0%} of bandwidth, cuDNN convolutions by class ({conv}; "
             f"wgrad 80 % of that), each launch max(kernel + {LAUNCH_US} µs, host cost: {HOST_US}); the compiled "
             f"part replayed in a CUDA graph (train.run's default on CUDA) or not.", "",
             "Counted as CUDA runs it (docs/step-count.md): the CPU stand-in asked for CUDA's lowering (the max-pool "
             "decomposition's scatter-add as Triton's atomic-add kernel, not the CPU's extern scatter_reduce_; "
             "reductions split for an H100's 132 SMs); cuDNN's convolution backward as dgrad and wgrad, each reading "
             "grad_out; fused AdamW and the foreach ops as multi_tensor_apply's launches (bench/multi_tensor.py); "
             "DALI's log-mel priced from its bytes (bench/front_end.py); a steady step (no optimiser-state "
             "allocation); AccumulateGrad's copies that only the recorder provokes left out.", ""]
    lines += _totals(report) + _floors_and_target(report) + _modules(report)
    for step in STEPS:
        lines += _breakdown(report, step)
    lines += _fp32(report)
    return "\n".join(lines) + "\n"
