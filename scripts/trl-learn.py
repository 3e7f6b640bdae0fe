#!/usr/bin/env python3
"""TRL's RewardTrainer on the folds of `duel bench learn`, for a paired comparison.

  .venv/bin/python scripts/trl-learn.py FILE --folds 2 --seeds 0,1 --epochs 1 \\
      [--lr 2e-5] [--max-length 256] [--model-dir assets/models/all-MiniLM-L6-v2] \\
      [--duel target/release/duel] > learn-results/trl.json
  target/release/duel bench learn FILE --folds 2 --seeds 0,1 --external trl=learn-results/trl.json

The folds come from `duel bench learn --print-folds`, so both trainers hold out the same
prompts. For each seed and fold a fresh `AutoModelForSequenceClassification` (one
output) is trained by `trl.RewardTrainer` with its defaults (batch 8, linear schedule,
no warm-up, no weight decay, dropout on) except the rate and epochs given, and every
held-out pair is scored. Text is `prompt + " " + response`, cut as duel cuts it: the
response first (cut at its end if it alone is too long), then the prompt's last tokens
that fit. Prints one JSON object: for each seed, whether each pair of the file (in its
order) had its chosen response scored higher.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encoder(tok, max_len):
    def encode(prompt, response):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        room = max(max_len - 2, 1)
        r = r[:room]
        keep = room - len(r)
        p = p[len(p) - keep:] if keep else []
        return [tok.cls_token_id] + p + r + [tok.sep_token_id]

    return encode


@torch.inference_mode()
def scores(model, pad_id, seqs, batch=64):
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[j, :len(seqs[i])] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).tolist()
        for j, v in zip(idx, logits):
            out[j] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "assets/models/all-MiniLM-L6-v2"))
    ap.add_argument("--duel", default=os.path.join(ROOT, "target/release/duel"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]

    cmd = [a.duel, "bench", "learn", a.file, "--folds", str(a.folds), "--print-folds"]
    if a.model_dir:
        cmd += ["--model-dir", a.model_dir]
    if a.pairs is not None:
        cmd += ["--pairs", str(a.pairs)]
    plan = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    fold_of = plan["fold_of"]

    rows = []
    with open(a.file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    rows = rows[:len(fold_of)]
    if len(rows) != len(fold_of):
        sys.exit(f"{a.file}: {len(rows)} records, duel counted {len(fold_of)} pairs")

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    enc = encoder(tok, a.max_length)
    chosen = [enc(r["prompt"], r["chosen"]) for r in rows]
    rejected = [enc(r["prompt"], r["rejected"]) for r in rows]

    start = time.perf_counter()
    right = []
    for seed in seeds:
        got = [False] * len(rows)
        for fold in range(a.folds):
            train = [i for i, k in enumerate(fold_of) if k != fold]
            test = [i for i, k in enumerate(fold_of) if k == fold]
            set_seed(seed)  # the random head depends on it
            model = AutoModelForSequenceClassification.from_pretrained(
                a.model_dir, num_labels=1, dtype=torch.float32)
            with tempfile.TemporaryDirectory() as out_dir:
                args = RewardConfig(
                    output_dir=out_dir, per_device_train_batch_size=8,
                    num_train_epochs=a.epochs, learning_rate=a.lr, max_length=a.max_length,
                    seed=seed, use_cpu=True, report_to="none", save_strategy="no",
                    eval_strategy="no", logging_steps=50, disable_tqdm=True,
                    dataloader_num_workers=0, bf16=False, gradient_checkpointing=False)
                data = Dataset.from_dict({"chosen_ids": [chosen[i] for i in train],
                                          "rejected_ids": [rejected[i] for i in train]})
                trainer = RewardTrainer(model=model, args=args, train_dataset=data,
                                        processing_class=tok)
                if len(trainer.train_dataset) != len(train):
                    sys.exit("TRL dropped training pairs")
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):  # stdout is the result
                    trainer.train()
            rc = scores(model, tok.pad_token_id, [chosen[i] for i in test])
            rr = scores(model, tok.pad_token_id, [rejected[i] for i in test])
            hits = 0
            for i, c, r in zip(test, rc, rr):
                got[i] = c > r
                hits += c > r
            print(f"trl seed {seed} fold {fold + 1}/{a.folds}: {hits / len(test):.3f} on "
                  f"{len(test)} pairs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        right.append(got)

    print(json.dumps({
        "options": f"trl {trl.__version__} RewardTrainer, lr {a.lr:g}",
        "epochs": a.epochs,
        "pairs": len(rows),
        "folds": a.folds,
        "fold_of": fold_of,
        "seeds": seeds,
        "right": right,
        "seconds": time.perf_counter() - start,
    }))


if __name__ == "__main__":
    main()
