"""The GPU code of kernels/conv.py, checked with no GPU (bench/launches.py, bench/gpu_code.py).

Every convolution of at-sca-3's seven residual blocks (conv3x3 without and with the BN-ReLU prologue,
the conv1x1 shortcut) and its data gradient (with the activation-backward epilogue where the forward had
a prologue) is launched through the project's host launchers on CPU tensors of the real shapes (bf16,
channels_last, batch 64 and 256), each launched specialisation is compiled for sm_90 with the Triton
wheel's ptxas, and its SASS and resources are read. Asserted per specialisation: wgmma (HGMMA) in the
SASS, no spills, the exact registers a thread, 16-byte accesses to the maps where the channel counts
are multiples of 8, and a grid of at least 132 programs (one wave of an H100's SMs) at both batches.
The compilation runs in a subprocess: this test session imports `kernels` for the interpreter
(tests/conftest.py), where nothing can be compiled.

Loads the kernel makes with cp.async (Hopper's pipelined copies into shared memory, how Triton feeds
wgmma) are read from the LLVM IR's `cp.async.*.shared.global [dst], [src], bytes` as loads of that width.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # ~40 sm_90 compilations: minutes of CPU

REPO = Path(__file__).resolve().parents[1]
BLOCKS = [  # at-sca-3: (C_in, C, T, F) of each residual block's input (fastsca/model.py)
    (1, 32, 400, 64), (32, 64, 200, 32), (64, 128, 100, 16), (128, 256, 100, 8),
    (256, 256, 100, 4), (256, 512, 100, 4), (512, 512, 100, 4),
]
BATCHES = (64, 256)
PARTS = 2
"""Compiling subprocesses (blocks split between them)."""
SMS = 132
"""Streaming multiprocessors of an H100 SXM (and an H200): a grid below this leaves SMs idle."""

RUNNER = r"""
import json, re, sys
import torch
import kernels  # noqa: F401
from kernels import conv
from bench import gpu_code, launches

blocks, batches, part, parts = json.loads(sys.argv[1])


def layers():
    for index, (c_in, c, t, f) in enumerate(blocks, 1):
        if index % parts == part:
            yield f"block{index}.conv1", c_in, c, 3, t, f, False
            yield f"block{index}.conv2", c, c, 3, t, f, True
            yield f"block{index}.shortcut", c_in, c, 1, t, f, False


def cl(*shape):
    return torch.empty(*shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)


def record():
    rows = []
    for batch in batches:
        for name, c_in, c_out, k, t, f, prologue in layers():
            x, grad, weight = cl(batch, c_in, t, f), cl(batch, c_out, t, f), torch.empty(c_out, c_in, k, k)
            vectors = (torch.ones(c_in), torch.ones(c_in)) if prologue else (None, None)
            rec = launches.Recording(0)
            with launches.capture_launches(rec):
                conv.conv_forward_triton(x, weight, *vectors)
                sums_grad = (cl(batch, c_out, t, f), torch.ones(c_out), torch.ones(c_out))   # as the backward calls it
                conv.conv_input_grad_triton(grad, weight, x, *vectors, sums_grad)
            for launch, step in zip(rec.launches, ("forward", "input_grad")):
                rows.append((launch, {"layer": name, "pass": step, "batch": batch, "c_in": c_in, "c_out": c_out,
                                      "k": k, "map": [t, f], "programs": launch.programs}))
    return rows


def widths(llir, params):
    as_loads = re.sub(r"cp\.async\.\w+\.shared\.global (\[[^\]]*\]), (\[[^\]]*\]), (0x[0-9a-f]+|\d+)",
                      lambda m: f"ld.global.b{8 * int(m.group(3), 0)} {m.group(2)}", llir)
    access = gpu_code._llir_accesses(as_loads, params)
    return {name: {"load_bytes": sorted({b // 8 for b in a.load_bits}),
                   "store_bytes": sorted({b // 8 for b in a.store_bits})} for name, a in access.items()}


def l2_only(llir, params):
    # Pointers loaded by cp.async.cg (L1 bypassed): the other loads are hidden, cg copies read as loads.
    hidden = re.sub(r"\bld\.global", "ld.hidden", llir)
    as_loads = re.sub(r"cp\.async\.cg\.shared\.global (\[[^\]]*\]), (\[[^\]]*\]), (0x[0-9a-f]+|\d+)",
                      lambda m: f"ld.global.b{8 * int(m.group(3), 0)} {m.group(2)}", hidden)
    return sorted(name for name, a in gpu_code._llir_accesses(as_loads, params).items() if a.load_bits)


def passes(code):
    return {name: [a.load_passes, a.store_passes] for name, a in code.pointers.items()}


codes, out = {}, []
for launch, row in record():
    key = gpu_code.specialisation_key(launch, 90)
    if key not in codes:
        _, signature, _, _ = gpu_code.specialise(launch, 90)
        params = [name for name, kind in signature.items() if kind != "constexpr"]
        kernel = gpu_code.compile_launch(launch, 90)
        code = gpu_code.inspect(kernel, launch.name, 90, params, sass=False)
        _, opcodes = gpu_code.resource_usage(kernel.asm["cubin"])
        codes[key] = {"variant": launch.variant(), "registers": code.registers, "local": code.local_bytes,
                      "stack": code.stack_bytes, "shared": kernel.metadata.shared, "num_warps": code.num_warps,
                      "hgmma": sum(op.startswith("HGMMA") for op in opcodes),
                      "pointers": widths(kernel.asm["llir"], params), "passes": passes(code),
                      "l2_only": l2_only(kernel.asm["llir"], params)}
    out.append(row | codes[key])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def launches() -> list[dict]:
    """One row per (batch, layer, pass): the launch's grid and what its specialisation compiled to
    (about 40 specialisations, compiled by PARTS subprocesses side by side: ~4 CPU-minutes in all)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9 warns when unset; 1 is its default
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps([BLOCKS, BATCHES, part, PARTS])], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in range(PARTS)]
    rows = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1200)
        assert proc.returncode == 0, stderr[-3000:]
        rows += json.loads(stdout.strip().splitlines()[-1])
    return rows


def _name(row: dict) -> str:
    return f"{row['layer']} {row['pass']} ({row['c_in']}->{row['c_out']}, k{row['k']}, {row['variant']})"


def test_every_layer_and_pass_was_compiled(launches):
    layers = {(row["layer"], row["pass"], row["batch"]) for row in launches}
    assert len(layers) == len(launches) == 2 * 3 * len(BLOCKS) * len(BATCHES)


def test_wgmma_in_every_convolution(launches):
    # Hopper's warpgroup MMA: BLOCK_M = 128 over 4 or 8 warps and bf16 tiles let tl.dot use it everywhere,
    # also where the A tile passes through registers (the prologue) and at K = 9 (block 1's first conv).
    without = [_name(row) for row in launches if row["hgmma"] == 0]
    assert not without, without


def test_no_spills(launches):
    spilled = [f"{_name(row)}: {row['local']} B local, {row['stack']} B stack" for row in launches
               if row["local"] or row["stack"]]
    assert not spilled, spilled


REGISTERS = {
    ("block1.conv1", "forward"): 64, ("block1.conv1", "input_grad"): 86, ("block1.conv2", "forward"): 140,
    ("block1.conv2", "input_grad"): 139, ("block1.shortcut", "forward"): 65, ("block1.shortcut", "input_grad"): 58,
    ("block2.conv1", "forward"): 80, ("block2.conv1", "input_grad"): 179, ("block2.conv2", "forward"): 138,
    ("block2.conv2", "input_grad"): 154, ("block2.shortcut", "forward"): 62, ("block2.shortcut", "input_grad"): 90,
    ("block3.conv1", "forward"): 116, ("block3.conv1", "input_grad"): 135, ("block3.conv2", "forward"): 138,
    ("block3.conv2", "input_grad"): 150, ("block3.shortcut", "forward"): 110,
    ("block3.shortcut", "input_grad"): 148, ("block4.conv1", "forward"): 103, ("block4.conv1", "input_grad"): 144,
    ("block4.conv2", "forward"): 137, ("block4.conv2", "input_grad"): 150, ("block4.shortcut", "forward"): 103,
    ("block4.shortcut", "input_grad"): 145, ("block5.conv1", "forward"): 103, ("block5.conv1", "input_grad"): 142,
    ("block5.conv2", "forward"): 137, ("block5.conv2", "input_grad"): 150, ("block5.shortcut", "forward"): 103,
    ("block5.shortcut", "input_grad"): 144, ("block6.conv1", "forward"): 103, ("block6.conv1", "input_grad"): 144,
    ("block6.conv2", "forward"): 137, ("block6.conv2", "input_grad"): 150, ("block6.shortcut", "forward"): 103,
    ("block6.shortcut", "input_grad"): 145, ("block7.conv1", "forward"): 103, ("block7.conv1", "input_grad"): 144,
    ("block7.conv2", "forward"): 137, ("block7.conv2", "input_grad"): 150, ("block7.shortcut", "forward"): 114,
    ("block7.shortcut", "input_grad"): 145,
}
"""Registers a thread per (layer, pass) on sm_90 with Triton 3.9 (ptxas of its wheel), the same at both
batches. The prologues and the activation backward cost 25-100 more than a plain GEMM would (the A tile
passes through registers; the data gradient's prologue forms d_y + 2 y * d_squares + d_sum from two map
tiles, 135-179 registers where the plain data gradient took 45-112); with 8 warps, 152 registers still fit
one program and 98 KB of pipeline buffers per SM, and the 4-warp 179 two; 128 x 128 tiles in the activation
backward needed 255 and spilled (kernels/conv.py, tiles)."""


def test_registers_per_specialisation(launches):
    seen = {(row["layer"], row["pass"], row["batch"]): row["registers"] for row in launches}
    assert seen == {(layer, step, batch): count for (layer, step), count in REGISTERS.items() for batch in BATCHES}


def test_every_map_is_read_and_written_in_one_pass(launches):
    # One loop over K loads the source map (its k*k taps of a row tile come from L2 after the first), the
    # epilogue stores the output and reads the activation backward's x once: no second pass over any map.
    expected = {"x_ptr": [1, 0], "y_ptr": [0, 1], "aux_ptr": [1, 0], "z_ptr": [1, 0]}
    wrong = [f"{_name(row)}: {name} {row['passes'][name]}" for row in launches for name in expected
             if name in row["passes"] and row["passes"][name] != expected[name]]
    assert not wrong, wrong
    assert sum("aux_ptr" in row["passes"] for row in launches) == len(BLOCKS) * len(BATCHES)
    # every data gradient reads y (the sums' gradients prologue) in the same single pass as d_y
    assert sum("z_ptr" in row["passes"] for row in launches) == len(launches) // 2


def test_map_accesses_are_16_bytes_where_channels_are_multiples_of_8(launches):
    # x (and grad) is read through x_ptr, y (and dx) written through y_ptr, the activation backward's x
    # read through aux_ptr: every access 16 bytes (8 bf16 channels) where the channel count allows.
    narrow = []
    for row in launches:
        access = row["pointers"]
        source_channels = row["c_in"] if row["pass"] == "forward" else row["c_out"]
        out_channels = row["c_out"] if row["pass"] == "forward" else row["c_in"]
        if source_channels % 8 == 0 and access["x_ptr"]["load_bytes"] != [16]:
            narrow.append(f"{_name(row)}: map loads {access['x_ptr']['load_bytes']} B")
        if out_channels % 8 == 0 and access["y_ptr"]["store_bytes"] != [16]:
            narrow.append(f"{_name(row)}: map stores {access['y_ptr']['store_bytes']} B")
        if "aux_ptr" in access and access["aux_ptr"]["load_bytes"] != [16]:
            narrow.append(f"{_name(row)}: activation loads {access['aux_ptr']['load_bytes']} B")
        if row["pass"] == "input_grad" and source_channels % 8 == 0 and access["z_ptr"]["load_bytes"] != [16]:
            narrow.append(f"{_name(row)}: y loads {access['z_ptr']['load_bytes']} B")
    assert not narrow, narrow


def test_map_and_weight_loads_allocate_in_l1(launches):
    # The k*k taps re-read map rows and every program re-reads the weight: none of those loads may be
    # cp.async.cg (L2 only), or each tap costs a full map of L2 traffic.
    bypassing = [f"{_name(row)}: {row['l2_only']}" for row in launches
                 if {"x_ptr", "w_ptr", "z_ptr"} & set(row["l2_only"])]
    assert not bypassing, bypassing


def test_grid_fills_the_sms_at_both_batches(launches):
    short = [f"{_name(row)} batch {row['batch']}: {row['programs']}" for row in launches if row["programs"] < SMS]
    assert not short, short
