"""`python -m bench.bill [--step bench/results/...-whole-step-b256.json] [--out bench/results/DATE-bill.md]`:
what a run on AudioSet costs, on paper, from the whole-step estimate (bench/whole_step.py).

From the per-launch bytes and FLOPs of one compiled at-sca-3 training step (batch 256, bf16, channels_last),
for each GPU at the datasheet floor and the derated estimate (bench/pricing.py): clips/s, GPU-hours per epoch
of each AudioSet set and per schedule; then what the loader must deliver at that rate (disk bandwidth for raw int16 at 16 kHz, CPU cores reading
HDF5 clips, measured here per core) and the storage of the packed sets. Every assumption is a named
constant with its source; any figure measured on a GPU later replaces its estimate.
"""
import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from bench.pricing import GPUS, LAUNCH_US, PRICES, Gpu
from train.data.shards import ShardIndex, ShardWriter

SAMPLE_RATE = 16000
CLIP_SECONDS = 10
BYTES_PER_CLIP = SAMPLE_RATE * CLIP_SECONDS * 2
"""Raw int16 samples of one packed clip (train/data/shards.py); targets and names add under 0.2 %."""

AUDIOSET_SETS = {
    "balanced train": 22_160,
    "unbalanced train": 2_041_789,
    "eval": 20_371,
}
"""Segments listed in Google's CSVs (balanced_train_segments.csv and eval_segments.csv counted; the
unbalanced count is AudioSet's published figure). Downloads today find fewer (videos removed)."""

SCHEDULES = {
    "PANNs Cnn14 schedule: 600k steps x 32 clips": 600_000 * 32,
    "one epoch of balanced + unbalanced": AUDIOSET_SETS["balanced train"] + AUDIOSET_SETS["unbalanced train"],
    "balanced set, 100 epochs": 100 * AUDIOSET_SETS["balanced train"],
}
"""Clips seen per schedule. PANNs trains Cnn14 for 600k iterations of batch 32 with balanced sampling over
the full set (its paper and README); a balanced-only run needs many passes over its 22k clips."""


BILL_PRICES = ("datasheet", "derated")
"""The prices of bench/pricing.py the bill shows: the floor, and the derated estimate as train.run runs on CUDA (the
compiled step replayed in a CUDA graph), the same rules bench.whole_step's report applies."""


def step_ms(launches: list[dict], gpu: Gpu, price: str) -> float:
    """The step's time under one of bench/pricing.py's PRICES: the sum over its rows (launches and extern calls)."""
    return sum(PRICES[price](row, gpu) for row in launches) * 1e-3


def measure_reader(clips: int = 600, reads: int = 3000, seed: int = 0) -> float:
    """Clips per second one process reads from an HDF5 shard of 10 s clips in random order (page cache warm):
    the per-sample work of a DALI reader worker (train/data/dali_source.py) before the GPU computes the log-mel."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clips.h5"
        with ShardWriter(path, ("/m/0",), ("x",), SAMPLE_RATE, SAMPLE_RATE * CLIP_SECONDS) as writer:
            for start in range(0, clips, 100):
                count = min(100, clips - start)
                writer.add(rng.integers(-3000, 3000, (count, SAMPLE_RATE * CLIP_SECONDS), dtype=np.int16),
                           np.ones((count, 1), np.uint8), [f"c{start + i}" for i in range(count)])
            writer.commit()
        index = ShardIndex.open(path)
        order = rng.integers(0, clips, reads)
        index.read(0)
        began = time.perf_counter()
        for i in order:
            index.read(int(i))
        elapsed = time.perf_counter() - began
        index.close()
    return reads / elapsed


def bill(report: dict, reader_clips_per_s: float) -> dict:
    """Every figure of the bill from a whole-step report (bench/whole_step.py's JSON) and the reader rate."""
    batch = report["batch"]
    rows = []
    for gpu in GPUS:
        for price in BILL_PRICES:
            ms = step_ms(report["launches"]["fastsca"], gpu, price)
            clips_per_s = batch / ms * 1e3
            rows.append({
                "gpu": gpu.name, "scenario": price, "ms_per_step": ms, "clips_per_s": clips_per_s,
                "gpu_hours": {name: clips / clips_per_s / 3600 for name, clips in {**AUDIOSET_SETS, **SCHEDULES}.items()},
                "disk_gb_per_s": clips_per_s * BYTES_PER_CLIP / 1e9,
                "reader_cores": clips_per_s / reader_clips_per_s,
            })
    storage = {name: clips * BYTES_PER_CLIP / 1e9 for name, clips in AUDIOSET_SETS.items()}
    return {"batch": batch, "step_report": report["date"], "reader_clips_per_s_per_core": reader_clips_per_s,
            "rows": rows, "storage_gb": storage}


def markdown(result: dict, step_path: str) -> str:
    """The bill as a markdown page, assumptions first."""
    lines = [f"# The bill on paper: at-sca-3 on AudioSet ({date.today().isoformat()})", "",
             f"From `{step_path}` (one compiled training step, batch {result['batch']}, bf16, channels_last, "
             f"every launch's bytes and FLOPs), priced by bench/pricing.py as that report prices it: `datasheet` = "
               f"max(bytes / peak bandwidth, FLOPs / peak bf16) + {LAUNCH_US} µs a launch (a floor); `derated` = each "
               "kernel at its kind's stated efficiency (80 % of peak bandwidth, the convolutions at their channel "
               "class's share of the tensor-core peak), the step replayed in a CUDA graph (an estimate, not a "
               "measurement)"
             + f"; raw int16 at 16 kHz, {BYTES_PER_CLIP / 1e3:.0f} kB a clip; the loader's CPU reads one clip in "
               f"{1e3 / result['reader_clips_per_s_per_core']:.2f} ms per core (measured on this machine: "
               f"{result['reader_clips_per_s_per_core']:.0f} clips/s, page cache warm), the log-mel on the GPU. "
               "One GPU; no evaluation or checkpoint time.", "",
             "| GPU | scenario | ms / step | clips/s | h / epoch (2.06 M) | h, PANNs schedule (19.2 M) | "
             "h, balanced x100 | disk GB/s | reader cores |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = list(SCHEDULES)
    for row in result["rows"]:
        hours = row["gpu_hours"]
        lines.append(f"| {row['gpu']} | {row['scenario']} | {row['ms_per_step']:.1f} | {row['clips_per_s']:,.0f} | "
                     f"{hours[names[1]]:.2f} | {hours[names[0]]:.2f} | {hours[names[2]]:.2f} | "
                     f"{row['disk_gb_per_s']:.2f} | {row['reader_cores']:.1f} |")
    lines += ["", "Storage of the packed sets (int16, 16 kHz, 10 s): "
              + ", ".join(f"{name} {gb:,.1f} GB" for name, gb in result["storage_gb"].items()) + "."]
    return "\n".join(lines) + "\n"


def newest_step_report(folder: Path = Path("bench/results")) -> str:
    """The newest batch-256 whole-step report in `folder` (their names start with the date)."""
    reports = sorted(folder.glob("*-whole-step-b256.json"))
    if not reports:
        raise SystemExit(f"no *-whole-step-b256.json in {folder}; run `python -m bench.whole_step --batch 256` first "
                         f"or give --step")
    return reports[-1].as_posix()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bill", description=__doc__.split("\n\n")[1])
    parser.add_argument("--step", default=None,
                        help="a whole-step report written by `python -m bench.whole_step` (default: the newest "
                             "bench/results/*-whole-step-b256.json)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: bench/results/DATE-bill.md)")
    args = parser.parse_args(argv)
    step = args.step or newest_step_report()
    report = json.loads(Path(step).read_text())
    result = bill(report, measure_reader())
    out = Path(args.out or f"bench/results/{date.today().isoformat()}-bill.md")
    out.write_text(markdown(result, step))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
