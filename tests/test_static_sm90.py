"""The GPU code of the fused kernels, checked with no GPU (bench/launches.py, bench/gpu_code.py, bench/static_report.py).

The attention modules run forward and backward through the project's launchers on CPU tensors of the
preset maps (N = T*F = 400, 200, 100) and one odd map (masked tails); every launched specialisation is
compiled for sm_90 and sm_80 with the Triton wheel's ptxas, and the claims of issue 9 are asserted:
no spills, 16-byte global accesses to every F-sized tensor at the preset maps, at most 64 registers in
the F-sized kernels on sm_90, and the SCA module at <= 4|F| forward and <= 5|F| backward. The traced
figures do not depend on the batch (strides and alignment do not), so a batch of 4 keeps the tracing
cheap. The kernels are compiled in two subprocesses (one per architecture, side by side): this test
session imports `kernels` for the interpreter (tests/conftest.py), where nothing can be compiled.

The tooling itself is checked on two small kernels whose bytes and widths are known, also in a
subprocess (the test session's Triton standard library is decorated for the interpreter too).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BATCH = 4
PRESET_CASES = {
    # arch: [(preset, C, T, F, dtype, layout)], chosen to cover N = 400, 200, 100, both dtypes and layouts,
    # and every arrangement at the hardest map (N = 100: a bf16 NCHW channel row is 200 B, not a multiple of 16).
    90: [("at-sca-3", 256, 100, 4, "bf16", "nchw"), ("at-sca-3", 512, 100, 2, "bf16", "nchw"),
         ("at-sca-3", 512, 100, 1, "bf16", "nchw"), ("at-csa-3", 512, 100, 1, "bf16", "nchw"),
         ("at-cps-3", 512, 100, 1, "bf16", "nchw"), ("at-sca-3", 512, 100, 1, "fp32", "nchw"),
         ("at-sca-3", 512, 100, 2, "bf16", "channels_last")],
    80: [("at-sca-3", 512, 100, 2, "bf16", "nchw"), ("at-sca-3", 512, 100, 1, "bf16", "nchw"),
         ("at-sca-3", 256, 100, 4, "fp32", "channels_last")],
}
SCA_KERNELS = {"channel_pool_forward_kernel", "spatial_squeeze_forward_kernel", "gate_forward_kernel",
               "gate_logit_grad_rows_kernel", "spatial_squeeze_logit_grad_kernel", "gate_input_grad_kernel"}
EXPECTED_KERNELS = {90: SCA_KERNELS | {"gate_logit_grad_columns_kernel", "channel_pool_logit_grad_kernel"},   # + CSA
                    80: SCA_KERNELS}
ODD_CASE = ("at-sca-3", 48, 25, 3, "bf16", "nchw")
"""N = 75 and C = 48: masked tails in both directions (values are checked under the interpreter elsewhere)."""

RUNNER = """
import json, sys
from bench import static_report as s
arch, batch, specs = json.loads(sys.argv[1])
cases = [s.ModuleCase(preset, "preset" if odd == 0 else "odd", (), c, t, f, dtype, layout)
         for preset, c, t, f, dtype, layout, odd in specs]
report = s.build_report(arch, batch, cases, sass=arch == 90)   # SASS widths for sm_90; the LLVM IR's for sm_80
print(json.dumps({"modules": report["modules"], "kernels": report["kernels"], "elapsed_s": report["elapsed_s"]}))
"""


@pytest.fixture(scope="session")
def compiled() -> dict[int, dict]:
    """The static report's module and kernel rows for each architecture (both compiled at once)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9 warns when unset; 1 is its default
    procs = {}
    for arch, specs in PRESET_CASES.items():
        spec = [[*case, 0] for case in specs] + [[*ODD_CASE, 1]]
        procs[arch] = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps([arch, BATCH, spec])], cwd=REPO,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for arch, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        out[arch] = json.loads(stdout.strip().splitlines()[-1])
    return out


def _name(k: dict) -> str:
    return f"{k['kernel']} [{k['variant']}] {k['dtype']} {k['layout']} {'x'.join(map(str, k['map']))}"


def _preset_kernels(report: dict) -> list[dict]:
    odd = list(ODD_CASE[1:4])
    return [k for k in report["kernels"] if k["map"] != odd]


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(PRESET_CASES))
def test_every_kernel_compiles_without_spills(compiled, arch):
    kernels = compiled[arch]["kernels"]
    names = {k["kernel"] for k in kernels}
    # Every F-sized pass of the arrangements traced on this arch was launched and compiled (the local FC
    # and the other sub-networks are plain PyTorch that torch.compile fuses: no kernels of ours).
    assert names == EXPECTED_KERNELS[arch]
    assert any(k["map"] == list(ODD_CASE[1:4]) for k in kernels)
    spilled = [f"{_name(k)}: {k['spill_bytes']} B local, {k['stack_bytes']} B stack" for k in kernels
               if k["spill_bytes"] or k["stack_bytes"]]
    assert not spilled, spilled
    assert all(k["registers"] > 0 for k in kernels)


@pytest.mark.parametrize("arch", sorted(PRESET_CASES))
def test_f_sized_accesses_are_16_bytes_at_the_preset_maps(compiled, arch):
    f_kernels = [k for k in _preset_kernels(compiled[arch]) if k["f_min_access_bytes"] is not None]
    assert {k["map"][1] * k["map"][2] for k in f_kernels} >= ({400, 200, 100} if arch == 90 else {200, 100})
    narrow = [f"{_name(k)}: {k['f_min_access_bytes']} B" for k in f_kernels if k["f_min_access_bytes"] != 16]
    assert not narrow, narrow


def test_f_sized_kernels_read_and_write_16_bytes_at_a_time_in_sass(compiled):
    # SASS (the instructions the GPU runs), not only the PTX: every F-sized kernel's widest global load
    # and store at the preset maps is 128 bits (LDG.E.128 / STG.E.128).
    f_kernels = [k for k in _preset_kernels(compiled[90]) if k["f_min_access_bytes"] is not None]
    stores_f = {"gate_forward_kernel", "gate_input_grad_kernel"}   # the others store S, Z or partial rows
    narrow = [f"{_name(k)}: load {k['widest_load_bytes']} B, store {k['widest_store_bytes']} B" for k in f_kernels
              if k["widest_load_bytes"] != 16 or (k["kernel"] in stores_f and k["widest_store_bytes"] != 16)]
    assert f_kernels and not narrow, narrow


def test_f_sized_kernels_use_at_most_64_registers(compiled):
    heavy = [f"{_name(k)}: {k['registers']}" for k in _preset_kernels(compiled[90])
             if k["f_min_access_bytes"] is not None and k["registers"] > 64]
    assert not heavy, heavy


def test_no_atomics(compiled):
    with_atomics = [_name(k) for arch in compiled for k in compiled[arch]["kernels"] if k["atomics"]]
    assert not with_atomics, with_atomics


FLOORS = {"at-sca-3": {"forward": 4, "backward": 5}, "at-csa-3": {"forward": 4, "backward": 5},
          "at-cps-3": {"forward": 4, "backward": 4}}
"""F-sized traffic in |F| (kernels/attention.py's table; tests/test_kernel_traffic.py measures the same by
running the kernels)."""


def test_every_module_moves_exactly_its_floor(compiled):
    # Exactly: a pointer whose passes were not traced would undercount, and undercounts fail too.
    rows = [m for arch in compiled for m in compiled[arch]["modules"]]
    assert {m["preset"] for m in rows} == set(FLOORS) and len(rows) == 2 * (len(PRESET_CASES[90]) + len(PRESET_CASES[80]) + 2)
    wrong = [f"{m['module']} {m['dtype']} {m['layout']} {m['phase']}: {m['traffic_f']:.3f} |F| "
             f"(kernels {m['kernel_f_bytes'] / m['f_bytes']:.2f}, aten {m['aten_f_bytes'] / m['f_bytes']:.2f}: "
             f"{', '.join(m['aten_ops']) or 'none'})"
             for m in rows if m["traffic_f"] != FLOORS[m["preset"]][m["phase"]]]
    assert not wrong, wrong


# ------------------------------------------------------------------------------ the tooling itself

TOOLING_RUN = """
import json
import torch, triton
import triton.language as tl
import kernels  # noqa: F401  (bench.launches patches its use_triton)
from bench import gpu_code, launches


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def twice_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    mean = tl.sum(acc) / n
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, (x - mean).to(y_ptr.dtype.element_ty), mask=offs < n)


def access(code, name):
    a = code.pointers[name]
    return {"load_bytes": sorted({b // 8 for b in a.load_bits}), "store_bytes": sorted({b // 8 for b in a.store_bits}),
            "load_passes": a.load_passes, "store_passes": a.store_passes}


out = {"copy": []}
for n, dtype in ((4096, torch.bfloat16), (4096, torch.float32), (4099, torch.bfloat16), (4099, torch.float32)):
    x = torch.randn(n).to(dtype)
    with launches.record(n) as recording:
        copy_kernel[(triton.cdiv(n, 1024),)](x, torch.empty_like(x), n, BLOCK=1024, num_warps=4)
    (launch,) = recording.launches
    code = gpu_code.kernel_code(launch, 90)
    out["copy"].append({"n": n, "itemsize": x.element_size(), "grid": list(launch.grid), "registers": code.registers,
                        "local": code.local_bytes, "atomics": code.sass_atomics, "x": access(code, "x_ptr"),
                        "y": access(code, "y_ptr"), "sass_load": code.widest_load_bytes,
                        "sass_store": code.widest_store_bytes})
n = 64 * 48
x = torch.randn(n)
with launches.record(n) as recording:
    y = torch.empty_like(x)
    twice_kernel[(1,)](x, y, n, BLOCK=256)
    recording.phase = "backward"
    z = y + x            # an F-sized aten op: 2 reads, 1 write
    z.view(48, 64).t()   # views move nothing
    torch.empty(n)       # nor do allocations
(launch,) = recording.launches
out["twice"] = {"x": access(gpu_code.kernel_code(launch, 80, sass=False), "x_ptr"),
                "y": access(gpu_code.kernel_code(launch, 80, sass=False), "y_ptr"),
                "aten": [[a.op, a.phase, a.read_bytes, a.written_bytes] for a in recording.aten], "n": n}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def tooling(tmp_path_factory) -> dict:
    """Two small kernels whose traffic and widths are known, recorded and compiled in a subprocess
    (a file, since @triton.jit reads its source)."""
    script = tmp_path_factory.mktemp("static") / "tooling_run.py"
    script.write_text(TOOLING_RUN)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_recorded_launches_compile_to_the_expected_widths(tooling):
    """n divisible by 16 lets Triton prove 16-byte alignment (128-bit accesses); an odd n leaves scalars."""
    for row in tooling["copy"]:
        width = 16 if row["n"] % 16 == 0 else row["itemsize"]
        assert row["grid"] == [-(-row["n"] // 1024)], row
        assert row["registers"] > 0 and row["local"] == 0 and not row["atomics"], row
        assert row["x"] == {"load_bytes": [width], "store_bytes": [], "load_passes": 1, "store_passes": 0}, row
        assert row["y"] == {"load_bytes": [], "store_bytes": [width], "load_passes": 0, "store_passes": 1}, row
        assert row["sass_load"] == width and row["sass_store"] == width, row


def test_passes_and_aten_traffic_are_counted(tooling):
    twice = tooling["twice"]
    assert twice["x"]["load_passes"] == 2 and twice["x"]["store_passes"] == 0
    assert twice["y"]["store_passes"] == 1 and twice["y"]["load_passes"] == 0
    assert twice["aten"] == [["aten.add.Tensor", "backward", 2 * 4 * twice["n"], 4 * twice["n"]]]


@pytest.mark.parametrize("argv, message", [(["--extra-map", "64x25"], "--extra-map takes CxTxF"),
                                           (["--presets", "at-sca-9"], "--presets: unknown at-sca-9"),
                                           (["--dtypes", "fp16"], "--dtypes: unknown fp16")])
def test_bad_arguments_get_a_one_line_error(argv, message, capsys):
    from bench import static_report

    with pytest.raises(SystemExit) as exit_info:
        static_report.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error
