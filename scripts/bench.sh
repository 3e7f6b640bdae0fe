#!/usr/bin/env bash
# Runs every speed benchmark of docs/PERFORMANCE.md and prints its table: each `duel
# bench` figure next to its baseline from the same run, with the ratio, the CPU and the
# date. `make bench` calls it.
#
#   scripts/bench.sh                      # duel's figures only; baselines say "skipped"
#   PYTHON=~/.venvs/duel-bench/bin/python scripts/bench.sh   # with the baselines
#
# Settings (environment):
#   PYTHON     a Python with torch, transformers, trl and llama-cpp-python (see
#              ../shared/bench/README.md); without it the baselines are skipped
#   BENCH_DIR  the baseline scripts (default ../shared/bench)
#   DATA       the PandaLM pairs (default ../shared/data/pandalm_pairs.jsonl): the
#              long prompt of the generation bench and the epoch's training data
#   PAIRS      pairs for the import bench (default 1000000)
#   STEPS      which steps to run, comma-separated (default
#              import,ui,train,generate,epoch, the epoch timing `duel train` against
#              TRL); e.g. the epoch alone on the other set:
#              STEPS=epoch DATA=../shared/data/hh_harmless_dev.jsonl scripts/bench.sh
#   EPOCH      0 leaves the epoch out of the default STEPS (default 1)
#   OUT        where the JSON of each run goes (default bench-results/)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-../shared/bench}
DATA=${DATA:-../shared/data/pandalm_pairs.jsonl}
PAIRS=${PAIRS:-1000000}
OUT=${OUT:-bench-results}
if [ "${EPOCH:-1}" = 0 ]; then
    STEPS=${STEPS:-import,ui,train,generate}
else
    STEPS=${STEPS:-import,ui,train,generate,epoch}
fi
wants() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for s in ${STEPS//,/ }; do
    case $s in
        import | ui | train | generate | epoch) ;;
        *) echo "STEPS: no step named '$s' (import, ui, train, generate, epoch)" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-}
BIN=target/release/duel
ENCODER=assets/models/all-MiniLM-L6-v2
GGUF=assets/models/SmolLM2-135M-Instruct.Q4_1.gguf

cargo build --release --locked
scripts/fetch-models.sh
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/skipped
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

baselines=1
if [ -z "$PYTHON" ]; then
    echo "baselines skipped: no PYTHON given (a Python with the packages of $BENCH_DIR/README.md)" | tee "$OUT/skipped"
    baselines=0
elif [ ! -f "$BENCH_DIR/torch_rm_step.py" ]; then
    echo "baselines skipped: no baseline scripts in $BENCH_DIR" | tee "$OUT/skipped"
    baselines=0
fi
[ -f "$DATA" ] || DATA=data/demo_pairs.jsonl

step() { echo "== $*" >&2; }
# A baseline that fails is said so in the table and the run goes on.
baseline() { # name command...
    local name=$1 status=0
    shift
    "$@" >"$OUT/$name.json" 2>"$tmp/$name.log" || status=$?
    if [ $status != 0 ]; then
        echo "$name baseline failed (exit $status): $(tail -c 300 "$tmp/$name.log" | tr '\n' ' ')" | tee -a "$OUT/skipped" >&2
        rm -f "$OUT/$name.json"
    fi
}

if wants import; then
    step "import: $PAIRS pairs"
    "$BIN" bench import --db "$tmp/import.db" --pairs "$PAIRS" --json >"$OUT/import.json"
fi

if wants ui; then
    step "the labeler: key to frame with the trainer and generator feed running"
    "$BIN" bench ui --pairs "$PAIRS" --json >"$OUT/ui.json"
fi

# Each duel figure right before its baseline, so the pair sees the same machine.
if wants train; then
    step "reward model: training step and scoring"
    "$BIN" bench train --json >"$OUT/train.json"
    if [ $baselines = 1 ]; then
        step "baseline: PyTorch training step and scoring"
        baseline torch "$PYTHON" "$BENCH_DIR/torch_rm_step.py" --model-dir "$ENCODER"
    fi
fi

if wants generate; then
    step "generation"
    "$BIN" bench generate --data "$DATA" --json >"$OUT/generate.json"
    if [ $baselines = 1 ]; then
        step "baseline: llama.cpp generation"
        baseline llamacpp "$PYTHON" "$BENCH_DIR/llamacpp_gen.py" --gguf "$GGUF" --threads 2 --data "$DATA"
    fi
fi

if wants epoch && [ -f "$DATA" ] && [ "$DATA" != data/demo_pairs.jsonl ]; then
    # The baselines' split: a prompt is held out iff sha1(prompt) % 4 == 0.
    python3 - "$DATA" "$tmp" <<'PY'
import hashlib, json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
test = lambda r: int(hashlib.sha1(r["prompt"].encode("utf-8")).hexdigest(), 16) % 4 == 0
for name, keep in (("train", lambda r: not test(r)), ("test", test)):
    with open(f"{sys.argv[2]}/{name}.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            if keep(r):
                f.write(json.dumps(r) + "\n")
PY
    "$BIN" --db "$tmp/epoch.db" import "$tmp/train.jsonl" >/dev/null
    # Both precisions of the products: f32 (the default) and bf16.
    for products in f32 bf16; do
        step "training epoch: duel train --products $products on the bench split"
        "$BIN" --db "$tmp/epoch.db" train --epochs 1 --holdout 0 --products "$products" \
            --out "$tmp/rm-$products" --json >"$tmp/train-summary.json"
        "$BIN" --db "$tmp/epoch.db" eval "$tmp/test.jsonl" --model "$tmp/rm-$products" --json >"$tmp/eval.json"
        # The epoch's own time, as TRL's is taken: model loading and evaluation left out.
        python3 - "$tmp" "$products" "$(basename "$DATA")" >"$OUT/epoch-$products.json" <<'PY'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/train-summary.json"))
ev = json.load(open(f"{sys.argv[1]}/eval.json"))
print(json.dumps({"products": sys.argv[2], "data": sys.argv[3], "wall_s": summary["seconds"], "pairs": summary["train_pairs"], "accuracy": ev["accuracy"]}))
PY
    done
    if [ $baselines = 1 ]; then
        step "baseline: TRL, one epoch at duel's learning rate"
        baseline trl "$PYTHON" "$BENCH_DIR/trl_rm_train.py" --model-dir "$ENCODER" \
            --train "$tmp/train.jsonl" --test "$tmp/test.jsonl" --epochs 1 --lr 5e-5
    fi
fi

python3 - "$OUT" <<'PY'
import json, os, platform, subprocess, sys, time
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print(f"\n{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores\n")
print("| what | duel | baseline | ratio |")
print("| --- | --- | --- | --- |")
def row(what, ours, base, unit, name):
    if ours is None:
        return
    b = f"{name}: {base:.1f} {unit}" if base else f"{name}: skipped"
    r = f"**{ours / base:.2f}×**" if base else ""
    print(f"| {what} | {ours:.1f} {unit} | {b} | {r} |")
imp = load("import")
if imp:
    print(f"| import, {imp['pairs']:,} pairs | {imp['import_pairs_per_s']:,.0f} pairs/s, peak RSS {imp['peak_rss_mb']:.0f} MB | target ≥ 100,000 pairs/s | |")
    for order, ms in imp["claim_ms"].items():
        print(f"| next pair at {imp['pairs']:,} pairs, {order} | {ms:.2f} ms | target < 5 ms | |")
ui = load("ui")
if ui:
    for phase, what in (("ordinary_pairs", "ordinary pairs"), ("one_megabyte_pair", "a pair of 1 MB responses")):
        p = ui[phase]
        print(f"| key to frame, {what}, trainer and feed running ({p['keys']} keys) | p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms | target p99 < 16 ms, max < 50 ms | |")
tr, to = load("train"), load("torch")
if tr:
    for seq, s in tr["train_step"].items():
        base = to and to["train_step"].get(seq, {}).get("pairs_per_s")
        row(f"training step, 8 pairs × {seq} tokens", s["pairs_per_s"], base, "pairs/s", "PyTorch")
    row("scoring, 64 texts × 128 tokens", tr["score_texts_per_s"],
        to and to["score_seq128"]["texts_per_s"], "texts/s", "PyTorch")
    row(f"scoring for the queue and the review ({tr['score_fast_products']} products), 64 texts × 128 tokens",
        tr["score_fast_texts_per_s"], to and to["score_seq128"]["texts_per_s"], "texts/s", "PyTorch")
g, l = load("generate"), load("llamacpp")
if g:
    t2 = l and l.get("threads2")
    row("generated tokens/s, one response", g["gen_tokens_per_s"], t2 and t2["gen_tps"], "tokens/s", "llama.cpp")
    row("generated tokens/s, a pair decoded as one batch (both responses; duel generate)",
        g["pair_gen_tokens_per_s"], t2 and t2["gen_tps"], "tokens/s", "llama.cpp")
    row(f"prompt tokens/s, {g['prompt_tokens']} tokens", g["prompt_tokens_per_s"],
        t2 and t2["prompt_tps"], "tokens/s", "llama.cpp")
    row(f"prompt tokens/s, {g['long_prompt']['n_tokens']} tokens", g["long_prompt"]["prompt_tokens_per_s"],
        t2 and t2["long_prompt"]["prompt_tps"], "tokens/s", "llama.cpp")
trl = load("trl")
for products in ("f32", "bf16"):
    e = load(f"epoch-{products}")
    if not e:
        continue
    base = trl and trl["per_epoch"][0]["wall_s"]
    ratio = f"**{e['wall_s'] / base:.2f}× the time**" if base else ""
    b = f"TRL: {base:.0f} s ({trl['n_train']} pairs), accuracy {trl['final_acc']:.3f}" if base else "TRL: skipped"
    print(f"| one training epoch, `--products {products}`, bench split of {e['data']} ({e['pairs']} pairs; held-out accuracy) | {e['wall_s']:.0f} s, accuracy {e['accuracy']:.3f} | {b} | {ratio} |")
skipped = os.path.join(out, "skipped")
if os.path.exists(skipped):
    print("\n" + open(skipped).read().strip())
PY
