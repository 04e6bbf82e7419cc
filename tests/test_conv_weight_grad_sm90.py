"""kernels/conv_weight_grad.py's GPU code, checked with no GPU (bench/launches.py, bench/gpu_code.py).

conv_weight_grad_triton runs on CPU tensors of at-sca-3's real convolutions (every block's two 3x3 layers
and its 1x1 shortcut; the second 3x3 with the BN-ReLU prologue) in bf16 channels_last at batch 64 and
256; each launch is intercepted, so the real host wrapper produces the real specialisation, which is
compiled for sm_90 with the Triton wheel's ptxas in a subprocess (this session imports `kernels` for the
interpreter, tests/conftest.py, where nothing can be compiled). Asserted: Hopper wgmma (HGMMA) in the SASS
exactly where the dW tile has 64+ rows (else mma.sync, HMMA), no spills, the registers of each
specialisation, 16-byte global loads of both maps where C_in and C_out are multiples of 8, and grids of
at least 132 programs (the SMs of an H100) at batch 64.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # 26 specialisations compiled and disassembled: about a minute of CPU

REPO = Path(__file__).resolve().parents[1]
BATCHES = (64, 256)
SMS = 132
# at-sca-3 (fastsca/config.py: channels 32..512, pools 2x2, 2x2, 1x2, 1x2 from a 400 x 64 log-mel): per block
# (C_in, C_out, T, F): conv1 (k = 3, reads the block input), conv2 (k = 3, C_out -> C_out, BN-ReLU prologue
# from bn1), shortcut (k = 1).
BLOCKS = [(1, 32, 400, 64), (32, 64, 200, 32), (64, 128, 100, 16), (128, 256, 100, 8), (256, 256, 100, 4),
          (256, 512, 100, 4), (512, 512, 100, 4)]
LAYERS = [layer for c_in, c_out, t, f in BLOCKS
          for layer in ((c_in, c_out, t, f, 3, False), (c_out, c_out, t, f, 3, True), (c_in, c_out, t, f, 1, False))]
REGISTERS = {
    # (C_in, C_out, T, F, k, prologue): registers a thread on sm_90 with Triton 3.9's ptxas, at both batches
    # (4 warps below 64 x 128 dW tiles, 8 from there: a 128 x 128 fp32 accumulator is 64 of them; the
    # layers under the ridge, blocks 1-2 and the 1x1 shortcuts, take tiles of at most 64 x 64). The grad tile
    # passes through registers, formed from d_y and y with the sums' gradients: 16-43 more than reading it
    # straight into shared memory (37-136 then).
    (1, 32, 400, 64, 3, False): 88, (32, 32, 400, 64, 3, True): 107, (1, 32, 400, 64, 1, False): 53,
    (32, 64, 200, 32, 3, False): 101, (64, 64, 200, 32, 3, True): 124, (32, 64, 200, 32, 1, False): 71,
    (64, 128, 100, 16, 3, False): 97, (128, 128, 100, 16, 3, True): 158, (64, 128, 100, 16, 1, False): 101,
    (128, 256, 100, 8, 3, False): 137, (256, 256, 100, 8, 3, True): 162, (128, 256, 100, 8, 1, False): 101,
    (256, 256, 100, 4, 3, False): 137, (256, 256, 100, 4, 3, True): 162, (256, 256, 100, 4, 1, False): 101,
    (256, 512, 100, 4, 3, False): 137, (512, 512, 100, 4, 3, True): 162, (256, 512, 100, 4, 1, False): 101,
    (512, 512, 100, 4, 3, False): 137, (512, 512, 100, 4, 1, False): 101,
}

RUNNER = """
import json, re, sys
import torch
import kernels.conv_weight_grad as wgrad
from bench import gpu_code, launches

batches, layers = json.loads(sys.argv[1])
compiled, rows = {}, []
for batch in batches:
    for c_in, c_out, t, f, k, prologue in layers:
        x = torch.empty(batch, c_in, t, f, dtype=torch.bfloat16, memory_format=torch.channels_last)
        grad = torch.empty(batch, c_out, t, f, dtype=torch.bfloat16, memory_format=torch.channels_last)
        scale = torch.ones(c_in) if prologue else None
        recording = launches.Recording(0)
        with launches.capture_launches(recording):
            # the production backward's call: grad is d_y, formed with the sums' gradients as it is read
            sums_grad = (torch.empty_like(grad), torch.ones(c_out), torch.ones(c_out))
            wgrad.conv_weight_grad_triton(x, grad, (c_out, c_in, k, k), scale, scale, sums_grad)
        (launch,) = recording.launches
        key = gpu_code.specialisation_key(launch, 90)
        if key not in compiled:
            kernel = gpu_code.compile_launch(launch, 90)
            fields, opcodes = gpu_code.resource_usage(kernel.asm["cubin"])
            compiled[key] = {"registers": fields["REG"], "local": fields["LOCAL"], "stack": fields["STACK"],
                             "shared": kernel.metadata.shared,
                             "num_warps": kernel.metadata.num_warps,
                             "hgmma": sum(op.startswith("HGMMA") for op in opcodes),
                             "hmma": sum(op.startswith("HMMA") for op in opcodes),
                             "loads": sorted({op for op in opcodes if op.startswith("LDG") and op != "LDGDEPBAR"})}
        rows.append({"layer": [c_in, c_out, t, f, k, prologue], "batch": batch, "grid": list(launch.grid),
                     "programs": launch.programs, "variant": launch.variant(), **compiled[key]})
print(json.dumps({"rows": rows, "specialisations": len(compiled)}))
"""


@pytest.fixture(scope="session")
def compiled() -> dict:
    """One row per (layer, batch): the launch's grid and its specialisation's sm_90 code."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9 warns when unset; 1 is its default
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([BATCHES, LAYERS])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _name(row: dict) -> str:
    c_in, c_out, t, f, k, prologue = row["layer"]
    return f"{c_in}->{c_out} {t}x{f} k{k}{' prologue' if prologue else ''} B{row['batch']} [{row['variant']}]"


def test_every_layer_was_compiled_at_both_batches(compiled):
    assert [(tuple(r["layer"]), r["batch"]) for r in compiled["rows"]] == [
        (layer, batch) for batch in BATCHES for layer in LAYERS]


def test_wgmma_where_the_tile_has_64_rows_else_mma_sync(compiled):
    # BLOCK_KP >= 64 (every 3x3 layer but 1 -> 32, whose K' = 9; the 1x1 shortcuts from 64+ channels):
    # HGMMA, Hopper's warpgroup MMA. Below (a tile of 16 or 32 rows), the mma.sync path: HMMA.
    wrong = []
    for row in compiled["rows"]:
        block_kp = int(row["variant"].split("BLOCK_KP=")[1].split()[0])
        wants_wgmma = block_kp >= 64
        if (row["hgmma"] > 0) != wants_wgmma or (row["hmma"] > 0) == wants_wgmma:
            wrong.append(f"{_name(row)}: {row['hgmma']} HGMMA, {row['hmma']} HMMA")
    assert not wrong, wrong
    without = {tuple(r["layer"][:5]) for r in compiled["rows"] if not r["hgmma"]}
    assert without == {(1, 32, 400, 64, 3), (1, 32, 400, 64, 1), (32, 64, 200, 32, 1)}   # K' = 9, 1 and 32


def test_no_spills(compiled):
    spilled = [f"{_name(r)}: {r['local']} B local, {r['stack']} B stack" for r in compiled["rows"]
               if r["local"] or r["stack"]]
    assert not spilled, spilled


def test_registers_per_specialisation(compiled):
    got = {tuple(r["layer"]): r["registers"] for r in compiled["rows"] if r["batch"] == BATCHES[0]}
    assert got == REGISTERS
    assert all(r["registers"] == REGISTERS[tuple(r["layer"])] for r in compiled["rows"])


def test_map_loads_are_16_bytes_where_channels_are_multiples_of_8(compiled):
    # Every map load (LDG, and LDGSTS: cp.async into shared memory) is 128-bit: x, d_y and y, and the prologue's
    # scale and shift. The one narrower kind is a 4-byte LDG.E where the dW tile's C_out side is 32 or 64 wide
    # under 4 warps: the sums' gradients d_sum and d_squares (two fp32 vectors of C_out, loaded once a program,
    # not maps). C_in = 1: x's shifted 3x3 taps of a one-channel map are 2-byte aligned only (LDG.E.U16), its
    # 1x1 reads are contiguous rows (16 bytes).
    vector_loads = {(1, 32, 3), (1, 32, 1), (32, 64, 1)}   # (C_in, C_out, k) where d_sum, d_squares are LDG.E
    for row in compiled["rows"]:
        c_in, c_out, _, _, k, _ = row["layer"]
        vectors = ["LDG.E"] if (c_in, c_out, k) in vector_loads else []
        if c_in % 8 == 0 and c_out % 8 == 0:
            maps = [op for op in row["loads"] if op not in vectors]
            assert maps and all(op.endswith(".128") for op in maps), (_name(row), row["loads"])
            assert set(vectors) <= set(row["loads"]), (_name(row), row["loads"])
        else:
            assert row["loads"] == vectors + (["LDG.E.U16", "LDGSTS.E.BYPASS.128"] if k == 3 else ["LDGSTS.E.BYPASS.128"]), \
                (_name(row), row["loads"])


def test_shared_memory_fits_an_sm(compiled):
    # The pipeline's stages of x and grad tiles (dynamic shared memory): at most 227 KB a block on sm_90.
    large = [f"{_name(r)}: {r['shared']} B" for r in compiled["rows"] if not 0 < r["shared"] <= 227 * 1024]
    assert not large, large


GRIDS = {   # (K' tiles * CO_TILES, SPLIT) per layer of LAYERS (kernels/conv_weight_grad.py's `tiling`)
    64: [(1, 264), (5, 53), (1, 264), (5, 53), (9, 30), (1, 256), (9, 58), (9, 58), (2, 73), (18, 29), (36, 14),
         (8, 18), (36, 14), (36, 14), (16, 9), (72, 7), (144, 5), (32, 5), (144, 5), (144, 5), (64, 3)],
    256: [(1, 264), (5, 53), (1, 264), (5, 53), (9, 30), (1, 264), (9, 58), (9, 58), (2, 131), (18, 29), (36, 22),
          (8, 33), (36, 14), (36, 14), (16, 17), (72, 11), (144, 7), (32, 9), (144, 7), (144, 7), (64, 5)],
}


def test_grids_are_the_tiling_rules(compiled):
    for batch in BATCHES:
        assert [tuple(r["grid"]) for r in compiled["rows"] if r["batch"] == batch] == GRIDS[batch], batch


def test_grids_fill_132_sms_at_batch_64(compiled):
    short = [f"{_name(r)}: {r['programs']} programs" for r in compiled["rows"] if r["programs"] < SMS]
    assert not short, short
