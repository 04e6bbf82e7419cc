"""Collects the runs of grid.sh into runs.csv (one row per run) and prints mean ± std per setting.

Usage: python results/real-audio/summarise.py [ROOT]  (ROOT default /tmp/ra; reads ROOT/runs/*/metrics.jsonl)
"""
import csv
import json
import os
import statistics
import sys
from pathlib import Path

FIELDS = ["setting", "preset", "seed", "steps", "final_train_loss", "best_step", "val_mAP", "test_mAP",
          "test_accuracy", "test_mAUC", "test_d_prime", "test_clips", "seconds"]


def read_run(folder: Path) -> dict | None:
    """One row for a finished run (its metrics.jsonl holds a test record), else None."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    test = next((r for r in records if r["kind"] == "test"), None)
    if test is None:
        return None
    train = [r for r in records if r["kind"] == "train"]
    setting, seed = folder.name.rsplit("-s", 1)
    preset = "baseline" if setting.startswith("baseline") else "at-sca-3"
    return {"setting": setting, "preset": preset, "seed": int(seed), "steps": test["step"],
            "final_train_loss": round(sum(r["loss"] for r in train[-4:]) / len(train[-4:]), 4),
            "best_step": test["best_step"], "val_mAP": round(test["validation_mAP"], 4),
            "test_mAP": round(test["mAP"], 4), "test_accuracy": round(test["accuracy"], 4),
            "test_mAUC": round(test["mAUC"], 4), "test_d_prime": round(test["d_prime"], 3),
            "test_clips": test["clips"], "seconds": round(test["time"] - records[0]["time"], 1)}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ra")
    rows = [row for folder in sorted((root / "runs").iterdir()) if (folder / "metrics.jsonl").is_file()
            and "-s" in folder.name and (row := read_run(folder)) is not None]
    out = Path(__file__).with_name("runs.csv")
    with open(f"{out}.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["setting"], r["seed"])))
    os.replace(f"{out}.tmp", out)
    print("| setting | seeds | test mAP | test top-1 | val mAP | final train loss |")
    print("|---|---|---|---|---|---|")
    for setting in sorted({r["setting"] for r in rows}):
        group = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["seed"])
        cells = []
        for key in ("test_mAP", "test_accuracy", "val_mAP", "final_train_loss"):
            values = [r[key] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f} ({', '.join(f'{v:.3f}' for v in values)})")
        print(f"| {setting} | {len(group)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
