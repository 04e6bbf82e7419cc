"""The residual block suite of the benchmarks (bench/cases.py `block_cases`, bench/gpu_report.py `block_tables`):
its grid at at-sca-3's block shapes, its CPU case run for real, and its report section.

`aot_eager` keeps compilation to tracing (Inductor's C++ builds take ~20 s per block on 2 cores) while dynamo and
AOT autograd still run, and the fused block's ops (`fastsca::block_*`) run their CPU engine either way.
"""
import collections

import pytest
import torch

from bench import cases, gpu_report, harness

CPU = cases.BenchEnv(torch.device("cpu"), compile_backend="aot_eager")
GPU = cases.BenchEnv(torch.device("cuda"))   # a description only: nothing runs on it here


def test_block_grid_reads_at_sca_3s_blocks_from_the_gpu_profile():
    """Blocks 1, 2, 4 and 7 of at-sca-3 as the gpu profile builds it (10 s clips: 400 frames, 64 mel bins), at the
    gpu profile's batch and the training step's; max-autotune at batch 256 only."""
    shapes = cases.block_shapes(GPU)
    wanted = [("block1", 1, 32, 400, 64, (2, 2), False), ("block2", 32, 64, 200, 32, (2, 2), False),
              ("block4", 128, 256, 100, 8, (1, 2), False), ("block7", 512, 512, 100, 4, (1, 1), True)]
    assert [(s.batch, s.name, s.in_channels, s.out_channels, s.time, s.freq, s.pool, s.attention) for s in shapes] \
        == [(batch, *block) for batch in (64, 256) for block in wanted]
    grid = cases.block_cases(GPU)
    assert len({c.id for c in grid}) == len(grid) == 4 * 3 + 4 * 4
    assert {(c.batch, c.provider) for c in grid} == {(b, p) for b in (64, 256) for p in cases.BLOCK_PROVIDERS} \
        - {(64, "compile_max_autotune")}
    assert {c.dtype for c in grid} == {"bf16"} and {c.mode for c in grid} == {"full"}
    assert [cases.skip_reason(c, GPU) for c in grid] == [None] * len(grid)
    assert cases.compile_mode("compile_max_autotune") == "max-autotune-no-cudagraphs"
    assert cases.compile_mode("compile_fused") == cases.compile_mode("compile") == "default"


def test_the_report_runs_the_blocks_at_batch_256_right_after_the_whole_step():
    """gpu_report's order: the whole at-sca-3 step's compiled providers, then the blocks at batch 256, then the
    other training steps, then the blocks at batch 64 and under max-autotune (which needs more budget left)."""
    def rank(case):
        return gpu_report.priority(case, GPU)

    grid = cases.block_cases(GPU)
    autotune = [c for c in grid if c.provider in cases.AUTOTUNE_PROVIDERS]
    first = [c for c in grid if c.batch == 256 and c not in autotune]
    last = [c for c in grid if c not in first]
    whole_step = cases.Case("train_step", "compile", "step", 256, model=cases.TARGET_PRESET)
    other_step = cases.Case("train_step", "eager", "step", 256, model="baseline")
    assert rank(whole_step) < min(map(rank, first)) <= max(map(rank, first)) < rank(other_step) < min(map(rank, last))
    assert {gpu_report.start_guard(c) for c in autotune} == {gpu_report.START_GUARD_S["block_autotune"]}
    assert {gpu_report.start_guard(c) for c in grid if c.provider.startswith("compile") and c not in autotune} == \
        {gpu_report.START_GUARD_S["compile"]}


def test_on_a_cpu_the_gpu_blocks_skip_and_the_odd_block_runs():
    grid = cases.block_cases(cases.BenchEnv(torch.device("cpu")))
    reasons = {c.id: cases.skip_reason(c, cases.BenchEnv(torch.device("cpu"))) for c in grid}
    odd = [c for c in grid if c.block == cases.CPU_BLOCK]
    assert [(c.provider, c.dtype, reasons[c.id]) for c in odd] == [("eager", "fp32", None), ("compile", "fp32", None),
                                                                    ("compile_fused", "fp32", None)]
    gpu_only = [c for c in grid if c.block != cases.CPU_BLOCK]
    assert len(gpu_only) == len(cases.block_cases(GPU))
    assert all(reasons[c.id].startswith("needs CUDA: ") for c in gpu_only), reasons


def _profiled_step(case: cases.Case) -> tuple[tuple[torch.Tensor, ...], collections.Counter]:
    """The case's timed call, once to compile and once under the profiler: its gradients and the ops it ran."""
    with cases.prepare(case, CPU) as prepared:
        prepared.fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            grads = prepared.fn()
    return grads, collections.Counter(event.name for event in profile.events())


def test_the_cpu_block_times_the_fused_block_on_the_same_work_as_the_reference():
    """compile_fused runs the fused block's ops (three convolutions and one tail, forward and backward) and the
    fused attention's, eager none of them; both return the same gradients of the same seeded block and input.
    Tolerance as tests/test_fused_block.py's fp32 block: 1e-5 relative, and 1e-5 (the input's gradient) or 1e-4
    (parameters' gradients, sums over every pixel in another order) of each tensor's largest entry absolute;
    measured up to 4e-6 of the largest entry."""
    torch._dynamo.reset()
    eager, fused = (cases.Case("block", p, "full", 3, dtype="fp32", block=cases.CPU_BLOCK)
                    for p in ("eager", "compile_fused"))
    expected, reference_ops = _profiled_step(eager)
    actual, fused_ops = _profiled_step(fused)
    assert not [name for name in reference_ops if name.startswith("fastsca::")]
    assert (fused_ops["fastsca::block_conv_forward"], fused_ops["fastsca::block_conv_input_grad"],
            fused_ops["fastsca::block_conv_weight_grad"], fused_ops["fastsca::block_tail_forward"],
            fused_ops["fastsca::block_tail_backward"], fused_ops["fastsca::attention_gate"]) == (3, 3, 3, 1, 1, 1)
    assert len(actual) == len(expected) and actual[0].shape == cases.CPU_BLOCK.input_dims
    for index, (got, want) in enumerate(zip(actual, expected)):
        share = 1e-5 if index == 0 else 1e-4
        torch.testing.assert_close(got, want, rtol=1e-5, atol=share * want.abs().max().item(),
                                   msg=lambda m, index=index: f"gradient {index}: {m}")


def _rows(markdown: list[str], heading: str) -> list[list[str]]:
    """The cells of the table under `heading` (header first, the |---| line dropped)."""
    start = markdown.index(heading)
    table = []
    for line in markdown[start + 2:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def test_the_cpu_block_runs_through_the_report_into_its_table():
    """gpu_report.run_case times the odd block's three providers here; the report's block section has its table,
    the providers in order, each speed-up over compile the compile row's time over its own."""
    torch._dynamo.reset()
    harness.configure_dynamo()
    records = [gpu_report.run_case(case, CPU) for case in cases.block_cases(CPU) if case.block == cases.CPU_BLOCK]
    assert [(r["status"], r.get("reason")) for r in records] == [("ok", None)] * 3
    gpu_report.derive(records, None)
    lines = gpu_report.block_tables(records)
    heading = "### odd: 5->7 channels on 13x11, SCA attention, pool 1x2; batch 3, fp32"
    rows = _rows(lines, heading)
    assert rows[0] == ["provider", "ms", "x compile", "x eager", "peak MB"]
    assert [row[0] for row in rows[1:]] == ["eager", "compile", "compile_fused"]
    compile_ms = records[1]["time_ms"]
    for row, record in zip(rows[1:], records):
        assert row[1] == format(record["time_ms"], ".3g") and record["time_ms"] > 0
        assert row[2] == format(compile_ms / record["time_ms"], ".3g")
        assert row[4] == "–"   # no device memory on a CPU


def _record(block: cases.BlockShape, provider: str, ms: float) -> dict:
    """A record as gpu_report.run_case leaves it for a GPU block case."""
    case = cases.Case("block", provider, "full", block.batch, dtype="bf16", block=block)
    prepared = harness.Prepared(fn=lambda: None, device=torch.device("cuda"))
    return {**case.describe(), "status": "ok", **harness.figures(prepared, ms / 1e3, 3 * 2 ** 20, 2 ** 20)}


def test_the_report_has_a_block_table_per_shape():
    """Two block shapes give two tables, in the order they ran, each with its own providers and speed-ups over
    its own compile row; the report's markdown carries the section between the module's and the step's."""
    block7, block1 = (next(s for s in cases.block_shapes(GPU) if (s.name, s.batch) == key)
                      for key in (("block7", 256), ("block1", 64)))
    times = {block7: {"compile_fused": 1.25, "compile": 2.0, "eager": 4.0, "compile_max_autotune": 1.6},
             block1: {"eager": 3.0, "compile": 1.5, "compile_fused": 0.75}}
    records = [_record(block, provider, ms) for block, by_provider in times.items()
               for provider, ms in by_provider.items()]
    gpu_report.derive(records, None)
    lines = gpu_report.block_tables(records)
    assert _rows(lines, "### block7: 512->512 channels on 100x4, SCA attention, pool 1x1; batch 256, bf16") == [
        ["provider", "ms", "x compile", "x eager", "peak MB"], ["eager", "4", "0.5", "1", "3"],
        ["compile", "2", "1", "2", "3"], ["compile_max_autotune", "1.6", "1.25", "2.5", "3"],
        ["compile_fused", "1.25", "1.6", "3.2", "3"]]
    assert _rows(lines, "### block1: 1->32 channels on 400x64, no attention, pool 2x2; batch 64, bf16") == [
        ["provider", "ms", "x compile", "x eager", "peak MB"], ["eager", "3", "0.5", "1", "3"],
        ["compile", "1.5", "1", "2", "3"], ["compile_fused", "0.75", "2", "4", "3"]]
    assert lines.index("### block7: 512->512 channels on 100x4, SCA attention, pool 1x1; batch 256, bf16") < \
        lines.index("### block1: 1->32 channels on 400x64, no attention, pool 2x2; batch 64, bf16")

    environment = {"device": "NVIDIA H100", "date": "2026-12-06", "torch": "2.13", "triton": "3.6", "dali": None,
                   "cuda": "13.0", "cudnn": 91000, "python": "3.11", "cpu_count": 16, "load_average": "0.1"}
    report = {"environment": environment, "mode": "gpu", "compile_backend": "inductor", "elapsed_s": 1.0,
              "budget_s": 480.0, "copy_bandwidth": None, "targets": [], "train_memory": [], "cases": records}
    markdown = gpu_report.render_markdown(report)
    assert "\n".join(lines) in markdown
    assert markdown.index("## SCA module") < markdown.index("## Residual block") < markdown.index("## Training step")


def test_no_block_measured_says_so():
    assert gpu_report.block_tables([])[-1] == "None measured in this run (see the skipped cases)."


@pytest.mark.parametrize("provider", ["fused", "compile_cudagraphs"])
def test_a_provider_the_block_suite_lacks_is_refused(provider):
    case = cases.Case("block", provider, "full", 3, dtype="fp32", block=cases.CPU_BLOCK)
    with pytest.raises(ValueError, match=f"unknown block provider '{provider}'; valid: eager, compile"):
        with cases.prepare(case, CPU):
            pass
