"""The real-soundscape comparison over seeds as a markdown table: each run's test figures (the `test` record
train.run appends to the run's metrics.jsonl) grouped by run name with the seed suffix removed, as the mean and
the range over the seeds.

    python results/sed/seed_table.py runs/final-at-sca-3-attention-s0 runs/final-at-sca-3-attention-s1 ...

A run folder named `<group>-s<seed>` joins group `<group>`; a folder without a test record is reported and
left out.
"""
import json
import re
import sys
from pathlib import Path
from statistics import mean

FIGURES = [("mAP", "mAP"), ("event F1", "event_f1"), ("segment F1", "segment_f1"), ("PSDS1", "psds1"),
           ("PSDS2", "psds2"), ("frame AP", "frame_ap")]


def test_record(run: Path) -> dict | None:
    """The last `test` record of run/metrics.jsonl, or None."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tests = [r for r in records if r.get("kind") == "test"]
    return tests[-1] if tests else None


def group_of(run: Path) -> str:
    return re.sub(r"-s\d+$", "", run.name)


def table(runs: list[Path]) -> str:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        record = test_record(run)
        if record is None:
            print(f"{run}: no test record in metrics.jsonl (unfinished run?): left out", file=sys.stderr)
            continue
        groups.setdefault(group_of(run), []).append(record)
    lines = ["| run | seeds | " + " | ".join(name for name, _ in FIGURES) + " |",
             "|---|---|" + "---|" * len(FIGURES)]
    for group, records in groups.items():
        cells = []
        for _, key in FIGURES:
            values = [r[key] for r in records]
            cells.append(f"{mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1
                         else f"{values[0]:.3f}")
        lines.append(f"| {group} | {len(records)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python results/sed/seed_table.py RUN_FOLDER [RUN_FOLDER ...]")
    print(table([Path(arg) for arg in sys.argv[1:]]))
