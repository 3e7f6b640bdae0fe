#!/usr/bin/env bash
# Regenerates data/demo_pairs.jsonl: two responses of the bundled generator for each
# prompt of data/demo_prompts.jsonl, with how each was sampled in `meta.generated`.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release --locked
scripts/fetch-models.sh
target/release/duel --db "$tmp/demo.db" generate data/demo_prompts.jsonl --seed 1
target/release/duel --db "$tmp/demo.db" export --format pairs --out data/demo_pairs.jsonl
