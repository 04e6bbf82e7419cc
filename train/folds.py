"""`python -m train.folds --data D --out DIR [train.run flags ...]`: cross-validation over the folds packed in D.

Trains one `python -m train.run --data D --fold K` per fold K of D (fold K the test split, train and
validation from the other folds, whole recordings held out together where D knows them), then writes
DIR/folds.md and DIR/folds.csv: each fold's test mAP (and accuracy where the metrics give it) and the
mean ± sample std over the folds.

Each run is a subprocess in DIR/fold-K (its output in log.txt there), with every flag this command does not
know passed on (--steps, --profile, --lr, ...). As in train/sweep.py, a fold whose metrics.jsonl holds its test
record is finished and not trained again, and one with a latest.pt resumes from it, so the command can be
stopped (Ctrl-C) and started again; a fold that fails is reported and the others go on. A fold made with
other settings (another train.run flag, other --data, or the same data packed again) is never reused:
the command is refused (one line) before any training, or with --overwrite such folds are trained again.
The summary row's fold count is the count its columns average; a column averaging fewer says so.
"""
import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastsca.atomic import write_atomically
from train.data.shards import ShardError, ShardIndex
from train.sweep import (SettingsError, check_runs, check_summaries, mean_std, read_records, report, resuming, run_job,
                         run_settings, write_csv)

# the test-record metrics reported per fold, where present (accuracy only where the metrics provide it)
METRICS = ("mAP", "accuracy")
# flags this command sets for each run itself
OWN_FLAGS = ("--fold", "--out", "--resume", "--data", "--eval-data")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m train.folds", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                     epilog="Any other flag is passed on to every `python -m train.run`.")
    parser.add_argument("--data", required=True, help="packed data with a fold per clip (train.pack)")
    parser.add_argument("--out", required=True, help="folder of the fold runs and the summary")
    parser.add_argument("--overwrite", action="store_true", help="train again, from scratch, the folds in --out "
                        "made with other settings or data, and replace a folds.md or folds.csv it did not write (without it "
                             "either is refused)")
    args, passed_on = parser.parse_known_args(argv)
    clashing = [f for f in passed_on if f.split("=")[0] in OWN_FLAGS]
    if clashing:
        parser.error(f"{', '.join(clashing)}: train.folds sets these for each run itself")
    return args, passed_on


def data_folds(path: str) -> list[int]:
    """The folds of the data at `path`; ShardError (one line) if it has none."""
    index = ShardIndex.open(path)
    try:
        folds = index.folds()
    finally:
        index.close()
    known = sorted(int(f) for f in np.unique(folds[folds >= 0]))
    if not known:
        raise ShardError(f"{path} has no folds (it was packed without a fold per clip); pack it with folds, or "
                         f"train once with python -m train.run --data D --eval-data E")
    return known


def run_command(fold: int, run_dir: Path, data: str, passed_on: list[str]) -> list[str]:
    """The `python -m train.run` command line of one fold; --resume when it has a checkpoint to go on from."""
    command = [sys.executable, "-m", "train.run", "--data", data, "--fold", str(fold), "--out", str(run_dir)]
    return resuming(command, run_dir) + passed_on


def summarise(folds: list[int], out: Path) -> tuple[list[dict], dict]:
    """One row per fold (its test metrics, "-" for a fold not finished) and the mean ± std row over the finished
    folds (a metric that fewer of them give says over how many)."""
    rows, values, finished = [], {m: [] for m in METRICS}, 0
    for fold in folds:
        tests = read_records(out / f"fold-{fold}", "test")[-1:]
        finished += bool(tests)
        row = {"fold": fold, "clips": tests[0]["clips"] if tests else "-"}
        for metric in METRICS:
            value = tests[0].get(metric) if tests else None
            row[metric] = "-" if value is None else f"{value:.4f}"
            if value is not None:
                values[metric].append(value)
        rows.append(row)
    total = {"fold": f"mean ± std ({finished} folds)", "clips": "",
             **{m: mean_std(v, 4) + (f" ({len(v)} of {finished} folds)" if 0 < len(v) < finished else "")
                for m, v in values.items()}}
    return rows, total


def write_summary(rows: list[dict], total: dict, out: Path, command: str) -> tuple[Path, Path]:
    """OUT/folds.md (with the command that made it) and OUT/folds.csv, each written whole (atomically)."""
    columns = [c for c in rows[0] if c in ("fold", "clips") or total[c] != "-"]
    lines = ["# Cross-validation", "", f"Made by `{command}`.", "",
             "Test-fold metrics of each fold's best.pt (chosen on a validation split held out of the other folds); "
             "mean ± sample std over the finished folds.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in (*rows, total)]
    md, csv_path = out / "folds.md", out / "folds.csv"
    write_atomically(md, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    write_atomically(csv_path, lambda tmp: write_csv(tmp, columns, [*rows, total]))
    return md, csv_path


def main(argv: list[str] | None = None) -> None:
    args, passed_on = parse_args(argv)
    out = Path(args.out)
    try:
        folds = data_folds(args.data)
        runs = {fold: out / f"fold-{fold}" for fold in folds}
        settings = {run_dir: run_settings(run_command(fold, run_dir, args.data, passed_on))
                    for fold, run_dir in runs.items()}
        check_summaries({out / "folds.md": "# Cross-validation\n", out / "folds.csv": "fold,"}, "train.folds",
                        args.overwrite)
        check_runs(list(settings.items()), args.overwrite)
    except (ShardError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    failed = []
    for fold, run_dir in tqdm(runs.items(), unit="fold", dynamic_ncols=True):
        outcome = run_job(run_dir, lambda: run_command(fold, run_dir, args.data, passed_on), settings[run_dir])
        if outcome == "busy":
            tqdm.write(f"{run_dir}: another train.folds is training it; left to it")
        failed += [run_dir] if outcome == "failed" else []
    rows, total = summarise(folds, out)
    command = shlex.join(["python", "-m", "train.folds", *(sys.argv[1:] if argv is None else argv)])
    report(*write_summary(rows, total, out, command), failed, "fold")


if __name__ == "__main__":
    main()
