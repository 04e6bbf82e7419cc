#!/usr/bin/env bash
# The real-audio grid of results/real-audio/README.md: packs the UrbanSound8K check clips (4 s) once, then trains
# each row one at a time (2-core box: nice, one loader worker), test fold 1, 150 steps of 32 clips, `cpu` profile.
# A run whose metrics.jsonl already holds its test record is skipped, so the script can be rerun after a stop.
# Usage (from the repo root, venv active): REAL_AUDIO=DIR bash results/real-audio/grid.sh [ROOT]   (ROOT default
# /tmp/ra; DIR holds labels.csv and clips/, the check set kept outside the repository)
set -euo pipefail
ROOT=${1:-/tmp/ra}
REAL_AUDIO=${REAL_AUDIO:?set REAL_AUDIO to the folder holding labels.csv and clips/}
DATA=$ROOT/us8k
[ -f "$DATA/index.json" ] || python -m train.pack --manifest "$REAL_AUDIO/labels.csv" \
    --audio-dir "$REAL_AUDIO/clips" --out "$DATA" --clip-seconds 4
run() {  # run NAME PRESET SEED [extra train.run flags...]
    local name=$1 preset=$2 seed=$3; shift 3
    local out=$ROOT/runs/$name-s$seed
    if [ -f "$out/metrics.jsonl" ] && grep -q '"kind": "test"' "$out/metrics.jsonl"; then return; fi
    rm -rf "$out"
    nice -n 10 python -m train.run --profile cpu --data "$DATA" --fold 1 --preset "$preset" --seed "$seed" \
        --steps 150 --eval-every 25 --num-workers 1 --out "$out" "$@" > "$ROOT/runs/$name-s$seed.log" 2>&1
    echo "$(date -u +%T) done $name-s$seed"
}
mkdir -p "$ROOT/runs"
# (2) the paper's question at today's cpu defaults
for seed in 0 1 2; do
    run baseline-defaults baseline $seed
    run at-sca-3-defaults at-sca-3 $seed
done
# (3) regularisation, at-sca-3 first
for seed in 0 1 2; do
    run at-sca-3-mixup at-sca-3 $seed --mixup-alpha 0.5
    run at-sca-3-specaug at-sca-3 $seed --spec-augment
done
for seed in 0 1 2; do
    run baseline-mixup baseline $seed --mixup-alpha 0.5
    run baseline-specaug baseline $seed --spec-augment
done
for seed in 0 1 2; do
    run at-sca-3-mixup-specaug at-sca-3 $seed --mixup-alpha 0.5 --spec-augment
    run baseline-mixup-specaug baseline $seed --mixup-alpha 0.5 --spec-augment
done
