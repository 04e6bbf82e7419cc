"""The block tail's GPU code, checked with no GPU (kernels/block_tail.py; bench/launches.py, bench/gpu_code.py).

The two launchers run on CPU tensors of at-sca-3's tail maps (bf16, channels_last: what torch.compile
under autocast hands the block) at batch 64 and 256 with their launches captured, not run; every
specialisation is compiled for sm_90 with the Triton wheel's ptxas and read back: no spills, the
registers of each specialisation, 16-byte global accesses to every map, enough programs for 132 SMs at
batch 64, and the bytes each launch moves (per pointer, bench/gpu_code.py's pointer_traffic) equal to
the floor of docs/kernels.md "The block tail", exactly. The compilation runs in a subprocess: this
test session imports `kernels` for the interpreter (tests/conftest.py), where nothing compiles.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # the compilation for sm_90 takes 30-80 s on a loaded box

REPO = Path(__file__).resolve().parents[1]
TAIL_MAPS = [
    # (C, T, F, pool, main BN): at-sca-3's block tails (fastsca/backbone.py); an attention block's main path
    # arrives normalised (no main BN). Blocks 6 and 7 (512 x 100 x 4) share one specialisation.
    (32, 400, 64, (2, 2), True), (64, 200, 32, (2, 2), True), (128, 100, 16, (1, 2), True),
    (256, 100, 8, (1, 2), True), (256, 100, 4, (1, 1), False), (512, 100, 4, (1, 1), False),
]
BATCHES = (64, 256)
SMS = 132
"""Streaming multiprocessors of an H100 SXM (and an H200)."""
REGISTERS = {
    # (kernel, C, T, F): registers per thread on sm_90 as ptxas (Triton 3.9's wheel) allocates them. A change
    # is a change of the code's shape, to be looked at, not waved through. The backward with main's BN holds,
    # per thread, 8 channels of four BN vectors, three sums, d_out and argmax, and at pool (2, 2) four taps of
    # main and shortcut in flight: 128-130 registers, 3-4 programs (12-16 warps) per SM, still 48-64 KB of
    # loads in flight per SM, 3x what covers DRAM latency at 3.35 TB/s (~18 KB).
    **{("block_tail_forward_kernel", *m): r for m, r in [((32, 400, 64), 70), ((64, 200, 32), 70),
                                                         ((128, 100, 16), 56), ((256, 100, 8), 56),
                                                         ((256, 100, 4), 32), ((512, 100, 4), 32)]},
    **{("block_tail_backward_kernel", *m): r for m, r in [((32, 400, 64), 128), ((64, 200, 32), 130),
                                                          ((128, 100, 16), 128), ((256, 100, 8), 128),
                                                          ((256, 100, 4), 56), ((512, 100, 4), 56)]},
}
FLOORS = {(2, 2): (2.375, 4.375), (1, 2): (2.75, 4.75), (1, 1): (3, 5)}
"""(forward, backward) map bytes per launch in units of |M| (one bf16 full-resolution map), by pool, as
docs/kernels.md "The block tail" derives them (the (1, 1) figures are the attention blocks': main without a BN)."""
MAP_POINTERS = {"block_tail_forward_kernel": ("main_ptr", "short_ptr", "out_ptr"),
                "block_tail_backward_kernel": ("dout_ptr", "out_ptr", "main_ptr", "short_ptr", "dmain_ptr",
                                               "dshort_ptr")}
"""The bf16 map arguments of each kernel, every access to which must be 16 bytes wide."""

RUNNER = """
import json, sys
import torch
from kernels import block_tail
from bench import gpu_code, launches

rows = []
for c, t, f, pool, scaled, batch in json.loads(sys.argv[1]):
    recording = launches.Recording(0)
    with launches.capture_launches(recording):
        def cl_map(*shape, dtype=torch.bfloat16):
            return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)
        main, shortcut = cl_map(batch, c, t, f), cl_map(batch, c, t, f)
        vectors = [torch.empty(c) if scaled else None for _ in range(2)] + [torch.empty(c), torch.empty(c)]
        out, argmax = block_tail.block_tail_forward_triton(main, vectors[0], vectors[1], shortcut, vectors[2],
                                                           vectors[3], tuple(pool))
        recording.phase = "backward"
        block_tail.block_tail_backward_triton(torch.empty_like(out), argmax, out, main, vectors[0], vectors[1],
                                              shortcut, vectors[2], vectors[3], tuple(pool))
    for launch in recording.launches:
        code = gpu_code.kernel_code(launch, 90)
        pointers = {name: {"bytes": moved, "bits": sorted(set(a.load_bits + a.store_bits)), "atomic": a.atomic}
                    for name, _, a, moved in gpu_code.pointer_traffic(launch, code)}
        fma = {}
        for fusion in (False, True):   # fused multiply-adds in the PTX: as launched, and with contraction on
            variant = launches.Launch(launch.fn, launch.args, dict(launch.kwargs, enable_fp_fusion=fusion),
                                      launch.grid, launch.phase)
            fma[str(fusion)] = gpu_code.compile_launch(variant, 90).asm["ptx"].count("fma.rn")
        rows.append({"kernel": launch.name, "fma": fma, "map": [c, t, f], "pool": pool, "scaled": scaled,
                     "batch": batch,
                     "grid": list(launch.grid), "programs": launch.programs, "registers": code.registers,
                     "local": code.local_bytes, "stack": code.stack_bytes, "sass_load": code.widest_load_bytes,
                     "sass_store": code.widest_store_bytes, "atomics": code.sass_atomics, "pointers": pointers})
constants = {"TILE": block_tail.TILE, "MAX_BLOCK_C": block_tail.MAX_BLOCK_C, "STEPS": block_tail.STEPS}
print(json.dumps({"constants": constants, "rows": rows}))
"""


@pytest.fixture(scope="module")
def compiled() -> dict:
    """kernels.block_tail's tiling constants, and one row per launch: both passes at every tail map and
    batch, compiled for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9 warns when unset; 1 is its default
    cases = [[c, t, f, list(pool), scaled, batch] for c, t, f, pool, scaled in TAIL_MAPS for batch in BATCHES]
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _label(row: dict) -> str:
    return f"{row['kernel']} C{row['map'][0]}x{row['map'][1]}x{row['map'][2]} pool {tuple(row['pool'])} B{row['batch']}"


def _expected_bytes(row: dict, constants: dict) -> dict[str, int]:
    """Bytes per pointer the floor allows: each map once, argmax 1 byte a window, the BN vectors (fp32, C)
    once, and the backward's partial sums: K fp32 rows of C per program along the windows."""
    channels, time, freq = row["map"]
    pt, pf = row["pool"]
    full = row["batch"] * channels * time * freq * 2
    pooled = row["batch"] * channels * (time // pt) * (freq // pf) * 2
    pooled_maps = {"out_ptr": pooled} | ({"argmax_ptr": pooled // 2} if (pt, pf) != (1, 1) else {})
    vector = channels * 4
    if row["kernel"] == "block_tail_forward_kernel":
        main = {"main_ptr": full, "m_scale_ptr": vector, "m_shift_ptr": vector} if row["scaled"] else {"main_ptr": full}
        return main | {"short_ptr": full, "s_scale_ptr": vector, "s_shift_ptr": vector} | pooled_maps
    block_c = min(channels, constants["MAX_BLOCK_C"])
    windows = -(-time // pt) * -(-freq // pf)   # ceil: windows cover the pool's dropped rows (none here)
    tiles = -(-windows // (constants["TILE"] // block_c))
    programs = -(-tiles // constants["STEPS"])
    rows = 3 if row["scaled"] else 2
    # With main's BN the ReLU mask is recomputed from main and shortcut: out is not read.
    # (Without it the shifts are not needed: d_out and out give dz.)
    main = ({"main_ptr": full, "m_scale_ptr": vector, "m_shift_ptr": vector, "s_shift_ptr": vector, "out_ptr": 0}
            if row["scaled"] else {})
    return {name: moved for name, moved in (pooled_maps | main | {
        "dout_ptr": pooled, "short_ptr": full, "s_scale_ptr": vector, "dmain_ptr": full, "dshort_ptr": full,
        "part_ptr": row["batch"] * programs * rows * channels * 4}).items() if moved}


def test_every_tail_map_and_batch_launches_both_passes_once(compiled):
    rows = compiled["rows"]
    expected = sorted((kernel, c, t, f, b) for c, t, f, _, _ in TAIL_MAPS for b in BATCHES
                      for kernel in MAP_POINTERS)
    assert sorted((r["kernel"], *r["map"], r["batch"]) for r in rows) == expected


def test_no_spills_and_the_registers_of_each_specialisation(compiled):
    wrong = [f"{_label(r)}: {r['registers']} registers, {r['local']} B local, {r['stack']} B stack"
             for r in compiled["rows"] if r["local"] or r["stack"]
             or r["registers"] != REGISTERS[(r["kernel"], *r["map"])]]
    assert not wrong, wrong


def test_maps_are_read_and_written_16_bytes_at_a_time(compiled):
    # Every access to a bf16 map is 128 bits in the PTX, and the SASS's widest load and store are
    # LDG.E.128 / STG.E.128 (argmax, one byte a value, is 8 bytes a thread: 8 channels of a 1024-value tile).
    narrow = [f"{_label(r)} {name}: {r['pointers'][name]['bits']}" for r in compiled["rows"]
              for name in MAP_POINTERS[r["kernel"]] if name in r["pointers"] and r["pointers"][name]["bits"] != [128]]
    narrow += [f"{_label(r)}: SASS {r['sass_load']} / {r['sass_store']} B" for r in compiled["rows"]
               if (r["sass_load"], r["sass_store"]) != (16, 16)]
    assert not narrow, narrow
    assert not [_label(r) for r in compiled["rows"] if r["atomics"]]   # the partials need no atomics


def test_grids_fill_132_sms_at_batch_64(compiled):
    small = [f"{_label(r)}: {r['programs']} programs" for r in compiled["rows"] if r["programs"] < SMS]
    assert not small, small


def test_each_launch_moves_exactly_its_floor(compiled):
    # Per pointer, exactly: a pass over a map too many, or a map not traced, fails; so does a wrong figure in
    # the docs' table (FLOORS), which the map bytes are checked against in units of |M|.
    for row in compiled["rows"]:
        moved = {name: p["bytes"] for name, p in row["pointers"].items()}
        assert moved == _expected_bytes(row, compiled["constants"]), _label(row)
        channels, time, freq = row["map"]
        full = row["batch"] * channels * time * freq * 2
        maps = sum(moved[name] for name in (*MAP_POINTERS[row["kernel"]], "argmax_ptr") if name in moved)
        phase = 0 if row["kernel"] == "block_tail_forward_kernel" else 1
        assert maps / full == FLOORS[tuple(row["pool"])][phase], _label(row)


def test_no_fused_multiply_add(compiled):
    # z must round after each multiply and add, as the reference's separate torch ops do, for out and argmax
    # (forward) and the recomputed ReLU mask (backward) to equal the reference's on the GPU too; with
    # contraction on, the compiler fuses them (checked: the count is not zero then, so this test can fail).
    rows = compiled["rows"]
    assert all(r["fma"]["False"] == 0 < r["fma"]["True"] for r in rows), [(_label(r), r["fma"]) for r in rows]
