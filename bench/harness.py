"""Measurement shared by the pytest-benchmark suites (bench/test_bench_*.py) and `python -m bench.gpu_report`.

A case (bench/cases.py) prepares a `Prepared`: one timed call `fn`, an untimed `setup` run before each
call (an L2 flush on CUDA), and what the call moves or processes (minimal bytes, clips). This module
warms it up (compilation, autotuning and worker start-up stay outside the timed region), measures its
peak device memory over one call, and times it: CUDA events around each call on the GPU (METHOD.md:
device work is asynchronous), `perf_counter` on the CPU, or the host clock after a synchronize for
host-bound work such as loaders; the median over the repetitions is the figure reported.
"""
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable

import torch

# An L2 flush between timed GPU calls, as triton.testing.do_bench does: at batch 32 a feature map
# (6.5 MB in bf16) fits the H100's 50 MB L2, and repeated calls over one buffer would time the cache.
L2_FLUSH_BYTES = 256 * 2 ** 20
# Timed wall time to aim for per case, and the repetitions allowed around it. The GPU runs short
# calls (10 us - 10 ms) many times in a fraction of a second; the CPU bench must fit its 10-minute
# budget on 2 shared cores, so it takes a few long calls.
TARGET_SECONDS = {"cuda": 0.25, "cpu": 1.0}
MIN_REPS = {"cuda": 10, "cpu": 3}
MAX_REPS = {"cuda": 200, "cpu": 30}
# Warm-up calls: the first compiles (forward and, on its first backward, backward), the second
# runs what was compiled once, so allocator growth and lazy initialisation are done before timing.
WARMUP_CALLS = 2


@dataclass
class Prepared:
    """One benchmark case made ready to run: what to call, and what each call moves or processes."""

    fn: Callable[[], object]
    """One timed call (no synchronisation inside; the harness adds it where needed)."""
    device: torch.device
    """Where the work runs; decides the timer and whether peak memory is measured."""
    minimal_bytes: int | None = None
    """Fewest bytes one call must move through device memory (each input read once, each output
    written once; see the formulas in bench/cases.py); None where bytes are not the measure."""
    items: int | None = None
    """Clips one call processes (training step, loader epoch); None for kernel cases."""
    setup: Callable[[], None] | None = None
    """Untimed work before each timed call (the L2 flush)."""
    host_timed: bool = False
    """Time on the host clock with a synchronize (work driven by the CPU, e.g. a loader epoch)."""
    warmup_calls: int = WARMUP_CALLS
    """Calls before timing; a loader's first epoch starts its workers."""
    min_reps: int | None = None
    """Overrides MIN_REPS for long calls (a loader epoch)."""
    info: dict = field(default_factory=dict)
    """Extra facts to report (dtype, model widths, bytes formula, ...)."""


@dataclass
class Measurement:
    """What the harness measured for one case."""

    median_s: float
    min_s: float
    reps: int
    peak_mem_bytes: int | None = None
    """Peak device memory allocated during one call (CUDA only), everything live included."""
    peak_mem_delta_bytes: int | None = None
    """That peak minus what was allocated just before the call: what the call itself needs."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _L2Flush:
    """Overwrites a buffer bigger than the L2 before each timed GPU call."""

    def __init__(self, device: torch.device) -> None:
        self.buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


_FLUSHES: dict[torch.device, _L2Flush] = {}


def l2_flush(device: torch.device) -> Callable[[], None] | None:
    """The per-call cache flush for CUDA devices (None elsewhere: CPU timings are long enough)."""
    if device.type != "cuda":
        return None
    if device not in _FLUSHES:
        _FLUSHES[device] = _L2Flush(device)
    return _FLUSHES[device]


def configure_dynamo() -> None:
    """Let torch.compile keep one graph per benchmarked shape instead of falling back to eager.

    Each (op, shape) is compiled with dynamic=False, so one compiled reference holds up to 6 shapes x
    grad modes; past dynamo's default limit of 8 it would silently run eager and the 'compile'
    column would time the eager reference.

    Also turns off AOTAutograd's buffer donation: a compiled backward may otherwise reuse the saved
    activations' memory for its outputs, and the `backward` mode, which runs autograd again and again
    over one graph kept with retain_graph, then fails on its second call (or a later case on a graph
    compiled for an earlier one): with donation off every case times the same work in any order.
    """
    config = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 512))
    import torch._functorch.config as functorch_config   # not loaded by `import torch` alone

    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False


def configure_threads(device: torch.device) -> None:
    """One intra-op thread for CPU runs unless FASTSCA_BENCH_THREADS says otherwise.

    The 2-core dev box is shared with other engineers' test runs: with 2 OpenMP threads a tiny SCA
    module forward measured 53 ms against 0.42 ms on 1 thread (and 142 vs 5 ms at batch 32), the
    spin-waiting threads timing the scheduler rather than the code. One thread gives stable ratios.
    """
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("FASTSCA_BENCH_THREADS", "1")))


def timed_call(prepared: Prepared) -> float:
    """Seconds of one synchronised call (setup outside), on the host clock: warm-up and estimates."""
    if prepared.setup is not None:
        prepared.setup()
    synchronize(prepared.device)
    start = time.perf_counter()
    prepared.fn()
    synchronize(prepared.device)
    return time.perf_counter() - start


def warm_up(prepared: Prepared) -> float:
    """Run the warm-up calls; returns the last one's seconds, the estimate that sizes the timed run."""
    seconds = math.inf
    for _ in range(max(1, prepared.warmup_calls)):
        seconds = timed_call(prepared)
    return seconds


def choose_reps(prepared: Prepared, estimate_s: float) -> int:
    kind = "cuda" if prepared.device.type == "cuda" else "cpu"
    low = prepared.min_reps or MIN_REPS[kind]
    wanted = TARGET_SECONDS[kind] / max(estimate_s, 1e-6)
    return int(min(max(low, MAX_REPS[kind]), max(low, wanted)))


def peak_memory(prepared: Prepared) -> tuple[int | None, int | None]:
    """(peak allocated during one call, that peak minus what was allocated before it); CUDA only."""
    if prepared.device.type != "cuda":
        return None, None
    if prepared.setup is not None:
        prepared.setup()
    torch.cuda.synchronize(prepared.device)
    torch.cuda.reset_peak_memory_stats(prepared.device)
    before = torch.cuda.memory_allocated(prepared.device)
    prepared.fn()
    torch.cuda.synchronize(prepared.device)
    peak = torch.cuda.max_memory_allocated(prepared.device)
    return peak, peak - before


def time_reps(prepared: Prepared, reps: int) -> list[float]:
    """Seconds of each of `reps` calls: CUDA events per call on the GPU, else the host clock."""
    if prepared.device.type == "cuda" and not prepared.host_timed:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda.synchronize(prepared.device)
        for start, end in zip(starts, ends):
            if prepared.setup is not None:
                prepared.setup()
            start.record()
            prepared.fn()
            end.record()
        torch.cuda.synchronize(prepared.device)
        return [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)]
    return [timed_call(prepared) for _ in range(reps)]


def measure(prepared: Prepared) -> Measurement:
    """Warm up, take the peak memory of one call, then time the median of N calls."""
    estimate = warm_up(prepared)
    peak, delta = peak_memory(prepared)
    times = time_reps(prepared, choose_reps(prepared, estimate))
    return Measurement(statistics.median(times), min(times), len(times), peak, delta)


def figures(prepared: Prepared, median_s: float | None, peak: int | None = None,
            delta: int | None = None) -> dict:
    """The derived numbers reported for a case: time, achieved GB/s over the minimal bytes, clips/s, memory."""
    out = {"time_ms": None if median_s is None else median_s * 1e3,
           "minimal_bytes": prepared.minimal_bytes, "gbps": None, "clips_per_s": None,
           "peak_mem_mb": None if peak is None else peak / 2 ** 20,
           "peak_mem_delta_mb": None if delta is None else delta / 2 ** 20}
    if median_s:
        if prepared.minimal_bytes is not None:
            out["gbps"] = prepared.minimal_bytes / median_s / 1e9
        if prepared.items is not None:
            out["clips_per_s"] = prepared.items / median_s
    return out


def copy_bandwidth(device: torch.device, nbytes: int) -> dict:
    """The memory ceiling: a device-to-device copy of `nbytes`, counting bytes read plus written.

    METHOD.md: measure the ceiling on the machine rather than trust the datasheet. Random bytes, not
    zeros; a buffer many times the L2, so the copy streams from DRAM.
    """
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    prepared = Prepared(fn=lambda: dst.copy_(src), device=device, minimal_bytes=2 * nbytes, warmup_calls=3)
    result = measure(prepared)
    return {"bytes_copied": nbytes, "time_ms": result.median_s * 1e3, "reps": result.reps,
            "gbps": 2 * nbytes / result.median_s / 1e9}


def _version(module: str, dist: str | None = None) -> str | None:
    try:
        return metadata.version(dist or module)
    except metadata.PackageNotFoundError:
        try:
            return getattr(__import__(module), "__version__", None)
        except ImportError:
            return None


def dali_version() -> str | None:
    """DALI's version, or None where it is not installed (the GPU machines' image has none)."""
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    return getattr(dali, "__version__", None) or _version("nvidia.dali", "nvidia-dali-cuda130")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (Linux: /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (file names of bench/results)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def environment(device: torch.device) -> dict:
    """Device, library versions and date, for the head of every report."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "time_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": dali_version(),
        "librosa": _version("librosa"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gb=props.total_memory / 1e9, multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}")
    return info


def run_pytest_benchmark(benchmark, prepared: Prepared) -> dict:
    """Time `prepared` under pytest-benchmark (warm-up and peak memory first, outside its rounds).

    pytest-benchmark times each round on the host clock, so each call ends with a synchronize on
    CUDA; `python -m bench.gpu_report` times the same calls with CUDA events. Returns the figures
    (time, GB/s, clips/s, memory) computed from the rounds' median, for `benchmark.extra_info`.
    """
    estimate = warm_up(prepared)
    peak, delta = peak_memory(prepared)
    reps = choose_reps(prepared, estimate)

    def call() -> None:
        prepared.fn()
        synchronize(prepared.device)

    benchmark.pedantic(call, setup=prepared.setup, rounds=reps, iterations=1, warmup_rounds=0)
    # With --benchmark-disable pedantic runs the call once and keeps no stats: report the warm-up's.
    median = benchmark.stats.stats.median if benchmark.stats is not None else estimate
    return figures(prepared, median, peak, delta)
