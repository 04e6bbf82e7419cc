"""`python -m train.sweep --table 1|2 --seeds N --out DIR [--data D --eval-data E] [train.run flags ...]`

Trains every row of the paper's Table 1 (baseline, AT-S global / local / both, AT-C, AT-SCA, AT-CSA, AT-C//S)
or Table 2 (AT-S, AT-C, AT-SCA with attention in the last 1, 2 and 3 blocks), each with seeds 0..N-1, and
writes the table: test mAP, mAUC and d' as mean ± std over the seeds (each run's best.pt, chosen on its
validation split), parameters and forward GFLOPs per clip, as DIR/tableT.md and DIR/tableT.csv.

Each run is a `python -m train.run` subprocess in DIR/runs/PRESET-seedS (its output in log.txt there), with
every flag this command does not know passed on (--steps, --profile, --channels, ...). A run whose
metrics.jsonl holds its test record is finished and not trained again; one with a latest.pt resumes from it,
so the sweep can be stopped (Ctrl-C) and started again with the same command. Both tables can share DIR:
Table 2's 1-layer rows are Table 1's AT-S, AT-C and AT-SCA runs. Several sweeps may work on one DIR at once
(e.g. both tables, one per core): a run being trained holds DIR/runs/RUN/sweep.lock, and the others wait
for it instead of training it too. Each run records its settings (its train.run command, and what its data
holds: train/checkpoint.py's fingerprint) in settings.json: a run made with other settings or data is never
reported as this command's: the command is refused before any training (one line), or with --overwrite such
runs are trained again from scratch.
"""
import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from fastsca.atomic import write_atomically
from fastsca.config import ModelConfig
from fastsca.inference import read_checkpoint
from fastsca.model import build_model
from fastsca.run_options import RunOptions
from train import checkpoint
from train.data.shards import ShardError


@dataclass(frozen=True)
class Row:
    """One row of a table: the preset trained and the paper's columns that describe it."""

    model: str
    """The model's name as the paper writes it."""
    preset: str
    """The fastsca.config preset that builds it."""
    detail: str
    """Spatial branches / channel attention (Table 1) or attention layers (Table 2)."""
    paper: tuple[float, float, float]
    """The paper's (mAP, mAUC, d') for the row, on AudioSet."""


TABLES: dict[int, tuple[Row, ...]] = {
    1: (Row("Baseline", "baseline", "-", (0.367, 0.967, 2.591)),
        Row("AT-S", "at-s-global", "global", (0.375, 0.966, 2.583)),
        Row("AT-S", "at-s-local", "local", (0.374, 0.967, 2.598)),
        Row("AT-S", "at-s", "global + local", (0.377, 0.967, 2.601)),
        Row("AT-C", "at-c", "channel", (0.378, 0.969, 2.632)),
        Row("AT-SCA", "at-sca", "global + local, channel", (0.383, 0.969, 2.635)),
        Row("AT-CSA", "at-csa", "global + local, channel", (0.381, 0.968, 2.627)),
        Row("AT-C//S", "at-cps", "global + local, channel", (0.380, 0.969, 2.632))),
    # the 1-layer presets are Table 1's (at-s == at-s-1), so one DIR trains them once for both tables
    2: (Row("AT-S", "at-s", "1 layer", (0.377, 0.967, 2.601)),
        Row("AT-S", "at-s-2", "2 layers", (0.379, 0.967, 2.605)),
        Row("AT-S", "at-s-3", "3 layers", (0.384, 0.968, 2.613)),
        Row("AT-C", "at-c", "1 layer", (0.378, 0.969, 2.632)),
        Row("AT-C", "at-c-2", "2 layers", (0.382, 0.969, 2.638)),
        Row("AT-C", "at-c-3", "3 layers", (0.385, 0.969, 2.643)),
        Row("AT-SCA", "at-sca", "1 layer", (0.383, 0.969, 2.635)),
        Row("AT-SCA", "at-sca-2", "2 layers", (0.387, 0.969, 2.648)),
        Row("AT-SCA", "at-sca-3", "3 layers", (0.390, 0.970, 2.652))),
}
"""Every row of the paper's Tables 1 and 2, in the paper's order."""

METRICS = ("mAP", "mAUC", "d_prime")
# seconds between looks at runs another sweep is training
LOCK_POLL_S = 10.0
# flags the sweep sets for each run itself
OWN_FLAGS = ("--preset", "--seed", "--out", "--resume", "--data", "--eval-data")
SETTINGS_FILE = "settings.json"
# what a run folder holds besides results: a run made without a settings record but with these only is empty
BOOKKEEPING = {"sweep.lock", "log.txt"}
# Every name train.run and this command write in a run folder: a folder holding anything else is never removed.
RUN_FILES = (*BOOKKEEPING, SETTINGS_FILE, "best.pt", "latest.pt", "*.tmp", "metrics.jsonl", "pretrained",
             "tensorboard", ".lock", ".torchrun-job", ".torchrun-job.tmp")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.splitlines()[0],
                                     allow_abbrev=False,
                                     epilog="Any other flag is passed on to every `python -m train.run`.")
    parser.add_argument("--table", type=int, choices=sorted(TABLES), required=True, help="the paper's table to train")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row, 0..N-1 (default 3)")
    parser.add_argument("--out", required=True, help="sweep folder: runs/ and the tables")
    parser.add_argument("--data", help="training split (default: the built-in set)")
    parser.add_argument("--eval-data", help="test split, reported (with --data)")
    parser.add_argument("--overwrite", action="store_true", help="train again, from scratch, the runs in --out "
                        "made with other settings or data, and replace a tableT.md or tableT.csv it did not write "
                        "(without it either is refused)")
    args, passed_on = parser.parse_known_args(argv)   # the rest goes to every train.run
    if (args.data is None) != (args.eval_data is None):
        parser.error("give both --data and --eval-data, or neither (to use the built-in set)")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    clashing = [f for f in passed_on if f.split("=")[0] in OWN_FLAGS]
    if clashing:
        parser.error(f"{', '.join(clashing)}: the sweep sets these for each run itself")
    return args, passed_on


def read_records(run_dir: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of one kind ([] before the run has written any)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def run_command(preset: str, seed: int, run_dir: Path, args: argparse.Namespace, passed_on: list[str]) -> list[str]:
    """The `python -m train.run` command line of one run; --resume when it has a checkpoint to go on from."""
    command = [sys.executable, "-m", "train.run", "--preset", preset, "--seed", str(seed), "--out", str(run_dir)]
    if args.data is not None:
        command += ["--data", str(args.data), "--eval-data", str(args.eval_data)]
    return resuming(command, run_dir) + passed_on


def resuming(command: list[str], run_dir: Path) -> list[str]:
    """`command` with --resume when run_dir holds a checkpoint to go on from."""
    return command + ["--resume"] if (run_dir / "latest.pt").is_file() else command


def claim(run_dir: Path) -> bool:
    """Take run_dir's sweep.lock (holding this process id); False while a live process holds it."""
    lock = run_dir / "sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)   # signal 0: only asks whether the holder lives
                return False
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)             # left by a sweep that died: take it over
                continue
            except PermissionError:                      # alive, another user's
                return False
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def train_logged(command: list[str], run_dir: Path) -> int | None:
    """Run one train.run command as a subprocess, its output appended to run_dir/log.txt; its exit code, None on
    Ctrl-C (shared by train.sweep and train.folds)."""
    with (run_dir / "log.txt").open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return process.wait()
        except KeyboardInterrupt:   # the run got the Ctrl-C too: let it write latest.pt
            process.wait()
            return None


class SettingsError(ValueError):
    """A run folder holding results made with other settings or data than this command's."""


def run_settings(command: list[str]) -> dict:
    """What makes a run's results its own: its train.run command without the interpreter, --resume and the
    run's own folder (so a moved folder is still itself), its splits named by what they hold
    (train/checkpoint.py's fingerprint: a split packed again differs, a copy elsewhere does not)."""
    kept, data = [arg for arg in command[1:] if arg != "--resume"], {}
    kept[kept.index("--out") + 1] = "RUN"
    for flag in ("--data", "--eval-data"):
        if flag in kept:
            where = kept.index(flag) + 1
            data[flag], kept[where] = _data_fingerprint(kept[where]), flag[2:].upper()
    return {"command": kept, "data": data}


@lru_cache(maxsize=None)
def _data_fingerprint(path: str) -> dict:
    """train/checkpoint.py's fingerprint of a split, read once per command (it reads every target)."""
    return checkpoint.data_fingerprint(path)


def settings_problem(run_dir: Path, settings: dict) -> str:
    """"" when run_dir holds no run yet (at most a log and the settings of a run that wrote nothing) or a run
    made with `settings`; otherwise what is wrong with it."""
    path = run_dir / SETTINGS_FILE
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} - BOOKKEEPING - {SETTINGS_FILE}:
        return ""
    if path.is_file():
        return "" if json.loads(path.read_text()) == settings else "holds a run made with other settings or data"
    return f"holds a run without a record of its settings ({SETTINGS_FILE})"


def check_runs(runs: list[tuple[Path, dict]], overwrite: bool) -> None:
    """Before any training: refuse (SettingsError, one line) when a run folder holds a run made with other
    settings than its (run_dir, settings) pair says; with `overwrite`, remove those folders to train again."""
    stale = [(run_dir, why) for run_dir, settings in runs if (why := settings_problem(run_dir, settings))]
    if stale and not overwrite:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise SettingsError(f"{stale[0][0]} {stale[0][1]}{more}: its results would be reported under this command; "
                            f"use another --out, the command that made it, or --overwrite to train it again")
    for run_dir, _ in stale:
        foreign = sorted(p.name for p in run_dir.iterdir() if not any(fnmatch(p.name, n) for n in RUN_FILES))
        if foreign:
            more = f" and {len(foreign) - 1} more" if foreign[1:] else ""
            raise SettingsError(f"{run_dir} holds {foreign[0]!r}{more}, which train.run did not write; --overwrite "
                                f"removes only run folders: move them, or use another --out")
    for run_dir, _ in stale:
        if not claim(run_dir):
            raise SettingsError(f"{run_dir} is being trained by another command; wait for it, or use another --out")
        shutil.rmtree(run_dir)


def run_job(run_dir: Path, command, settings: dict) -> str:
    """Train one run (its output in run_dir/log.txt; `command()` its train.run command line, made once the run
    is claimed, so that it resumes what is there) unless it has its test record: "done" (now or earlier),
    "busy" (another command is training it) or "failed" (said in one line); exits 130 when it was stopped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not claim(run_dir):
        return "busy"
    try:
        if problem := settings_problem(run_dir, settings):   # started meanwhile by a command with other settings
            tqdm.write(f"{run_dir} {problem} (started by another command meanwhile); left to it")
            return "failed"
        if read_records(run_dir, "test"):
            return "done"
        write_atomically(run_dir / SETTINGS_FILE, lambda tmp: tmp.write_text(json.dumps(settings, indent=1)))
        code = train_logged(command(), run_dir)
    finally:
        (run_dir / "sweep.lock").unlink(missing_ok=True)
    if code is None or (code == 0 and not read_records(run_dir, "test")):
        tqdm.write(f"stopped during {run_dir} (it wrote latest.pt); run the same command again to go on",
                   file=sys.stderr)
        sys.exit(130)
    if code != 0:
        last = (run_dir / "log.txt").read_text().strip().splitlines()[-1:]
        tqdm.write(f"{run_dir}: train.run exited {code}: {last[0] if last else ''} (log.txt there); going on")
        return "failed"
    return "done"


def model_cost(config: ModelConfig) -> tuple[int, float]:
    """(parameters, forward GFLOPs for one clip) of a model config, counted with torch's flop counter."""
    model = build_model(config, RunOptions(fused_attention=False)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, config.input_frames, config.n_mels))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def mean_std(values: list[float | None], digits: int = 3) -> str:
    """'mean ± sample std' of `values`, leaving out None (a metric no class could be scored for); "-" for
    none; std 0 for one."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {std:.{digits}f}"


def summarise(table: int, seeds: int, runs: Path) -> list[dict]:
    """One dict per row: the test metrics of its finished seeds (mean ± std), parameters and GFLOPs."""
    rows = []
    for row in TABLES[table]:
        tests = [t for s in range(seeds) for t in read_records(runs / f"{row.preset}-seed{s}", "test")[-1:]]
        cost = "", ""
        best = runs / f"{row.preset}-seed0" / "best.pt"
        if best.is_file():
            params, gflops = model_cost(ModelConfig(**read_checkpoint(best)["config"]["model"]))
            cost = f"{params / 1e6:.3f} M", f"{gflops:.5g}"
        rows.append({"model": row.model, "attention": row.detail, "preset": row.preset, "seeds": len(tests),
                     **{m: mean_std([t[m] for t in tests]) for m in METRICS},
                     "params": cost[0], "GFLOPs/clip": cost[1],
                     **{f"paper {m}": f"{v:.3f}" for m, v in zip(METRICS, row.paper)}})
    return rows


def write_tables(rows: list[dict], table: int, out: Path, command: str, note: str) -> tuple[Path, Path]:
    """OUT/tableT.md (with the command that made it) and OUT/tableT.csv, each written whole (atomically)."""
    columns = list(rows[0])
    md = out / f"table{table}.md"
    lines = [f"# Table {table}, reproduced", "", f"Made by `{command}`.", "", note, "",
             "| " + " | ".join(c.replace("d_prime", "d′") for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    write_atomically(md, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    csv_path = out / f"table{table}.csv"
    write_atomically(csv_path, lambda tmp: write_csv(tmp, columns, rows))
    return md, csv_path


def check_summaries(starts: dict[Path, str], command: str, overwrite: bool) -> None:
    """Before any training: SettingsError (one line) for a summary file that exists and does not start as the
    command writes it (`starts`: path -> its first characters), unless `overwrite`: it would be replaced."""
    for path, start in starts.items():
        if overwrite or not path.exists():
            continue
        try:
            with path.open(errors="replace") as handle:
                first = handle.read(len(start))
        except OSError:
            first = ""
        if first != start:
            raise SettingsError(f"{path} was not written by {command}; it was left as it is: use another --out, or "
                                f"--overwrite to replace it")


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A header of `columns`, then one line per row (keys outside `columns` left out)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    args, passed_on = parse_args(argv)
    out = Path(args.out)
    runs = out / "runs"
    jobs = {runs / f"{row.preset}-seed{seed}": (row.preset, seed) for row in TABLES[args.table]
            for seed in range(args.seeds)}
    try:
        settings = {run_dir: run_settings(run_command(*job, run_dir, args, passed_on)) for run_dir, job in jobs.items()}
        check_summaries({out / f"table{args.table}.md": f"# Table {args.table}, reproduced\n",
                         out / f"table{args.table}.csv": "model,"}, "train.sweep", args.overwrite)
        check_runs(list(settings.items()), args.overwrite)
    except (SettingsError, ShardError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    failed = []
    bar = tqdm(total=len(jobs), unit="run", dynamic_ncols=True)
    while jobs:
        waiting = {}
        for run_dir, job in jobs.items():
            bar.set_postfix_str(run_dir.name)
            outcome = run_job(run_dir, lambda: run_command(*job, run_dir, args, passed_on), settings[run_dir])
            if outcome == "busy":
                waiting[run_dir] = job
                continue
            failed += [run_dir] if outcome == "failed" else []
            bar.update(1)
        if waiting:
            bar.set_postfix_str(f"waiting for {len(waiting)} run(s) another sweep is training")
            time.sleep(LOCK_POLL_S)
        jobs = waiting
    bar.close()
    command = shlex.join(["python", "-m", "train.sweep", *(sys.argv[1:] if argv is None else argv)])
    note = (f"Test-split metrics of each run's best.pt (chosen on a validation split held out of the training "
            f"data), mean ± sample std over seeds 0..{args.seeds - 1}; parameters and forward GFLOPs per clip of "
            f"the model as trained; `paper` columns: the paper's AudioSet numbers, for reference only.")
    report(*write_tables(summarise(args.table, args.seeds, runs), args.table, out, command, note), failed, "run")


def report(md: Path, csv_path: Path, failed: list[Path], what: str) -> None:
    """Print the written table and where it is; exit 1 naming the runs (`what`: run, fold) that failed."""
    print(md.read_text(), end="")
    print(f"wrote {md} and {csv_path}")
    if failed:
        print(f"error: {len(failed)} {what}(s) failed: {', '.join(map(str, failed))}; see log.txt in each",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
