#!/usr/bin/env bash
# Reproduces the learning table of docs/PERFORMANCE.md: cross-validation of the candidate
# defaults on the two development sets (duel bench learn; see docs/PERFORMANCE.md).
# Usage: scripts/learn-table.sh [DATA_DIR] [SEEDS]   (defaults: ../shared/data, 0)
# Writes one JSON summary per data set to learn-results/ and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
seeds=${2:-0}
out=learn-results
mkdir -p "$out"
cargo build --release --locked
# The defaults first: every other option is compared with them.
options=(
  --option "defaults="
  --option "old-defaults=--lr 1e-4 --length-aux 1"
  --option "length=--length-aux 1"
  --option "no-warmup=--warmup 0"
)
run() { # name file epochs
  target/release/duel bench learn "$data/$2" --folds 2 --seeds "$seeds" --epochs "$3" \
    "${options[@]}" --json >"$out/$1.json"
  python3 - "$out/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\n{r['file']}: {r['pairs']} pairs, {r['prompts']} prompts, {r['folds']} folds, seeds {r['seeds']}")
print("| option | epochs | accuracy | 95% interval | vs defaults (95% interval) |")
print("| --- | --- | --- | --- | --- |")
for o in r["options"]:
    vs = o["vs_first"]
    d = "" if vs is None else f"{vs['mean']:+.3f} ({vs['interval']['low']:+.3f} to {vs['interval']['high']:+.3f})"
    print(f"| {o['name']} `{o['options']}` | {o['epochs']} | {o['accuracy']:.3f} | {o['interval']['low']:.3f}–{o['interval']['high']:.3f} | {d} |")
print(f"| \"longer response wins\" | | {r['longer_wins']:.3f} | | |")
PY
}
run hh_harmless_dev hh_harmless_dev.jsonl 1
run pandalm pandalm_pairs.jsonl 3
