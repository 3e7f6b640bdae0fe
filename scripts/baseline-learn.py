#!/usr/bin/env python3
"""Another trainer on the folds of `duel bench learn`, for a paired comparison.

  .venv/bin/python scripts/baseline-learn.py FILE [--trainer trl|plain] --folds 2 \
      --seeds 0,1 --epochs 1 [--lr 2e-5] [--max-length 256] \
      [--model-dir assets/models/all-MiniLM-L6-v2] [--duel target/release/duel] \
      > learn-results/trl.json
  target/release/duel bench learn FILE --folds 2 --seeds 0,1 --external trl=learn-results/trl.json

The folds come from `duel bench learn --print-folds`, so both trainers hold out the same
prompts. For each seed and fold a fresh model is trained from the base and every
held-out pair is scored. The trainers:

- `trl`: `trl.RewardTrainer` on `AutoModelForSequenceClassification` (one output) with
  its defaults (batch 8, linear schedule, no warm-up, no weight decay, dropout on)
  except the rate and epochs given.
- `plain`: a plain PyTorch loop: `BertModel` and a linear head on the mean of the
  tokens' states (the pooling the bundled sentence encoder was trained with),
  Bradley-Terry loss, `torch.optim.AdamW` with its defaults at a constant rate,
  batch 8 shuffled by the seed, dropout on.

Text is `prompt + " " + response`, cut as duel cuts it: the response first (cut at its
end if it alone is too long), then the prompt's last tokens that fit. Prints one JSON
object: for each seed, whether each pair of the file (in its order) had its chosen
response scored higher.
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
import torch.nn.functional as F
import trl
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel, set_seed
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


class MeanPooled(torch.nn.Module):
    """`BertModel` and a linear head on the masked mean of the last states."""

    def __init__(self, model_dir):
        super().__init__()
        self.encoder = BertModel.from_pretrained(model_dir, add_pooling_layer=False)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0)).squeeze(-1)


def padded(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, :len(s)] = 1
    return ids, mask


def reward_of(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits.squeeze(-1) if hasattr(out, "logits") else out


def train_trl(a, tok, seed, chosen, rejected):
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
        data = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
        trainer = RewardTrainer(model=model, args=args, train_dataset=data,
                                processing_class=tok)
        if len(trainer.train_dataset) != len(chosen):
            sys.exit("TRL dropped training pairs")
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the result
            trainer.train()
    return model


def train_plain(a, tok, seed, chosen, rejected):
    set_seed(seed)
    model = MeanPooled(a.model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(a.epochs):
        order = torch.randperm(len(chosen), generator=gen).tolist()
        for s in range(0, len(order), 8):
            idx = order[s:s + 8]
            ids, mask = padded([chosen[i] for i in idx] + [rejected[i] for i in idx],
                               tok.pad_token_id)
            r = model(ids, mask)
            loss = -F.logsigmoid(r[:len(idx)] - r[len(idx):]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@torch.inference_mode()
def scores(model, pad_id, seqs, batch=64):
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        ids, mask = padded([seqs[i] for i in idx], pad_id)
        for j, v in zip(idx, reward_of(model, ids, mask).tolist()):
            out[j] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--trainer", choices=["trl", "plain"], default="trl")
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
            t0 = time.perf_counter()
            train_one = train_trl if a.trainer == "trl" else train_plain
            model = train_one(a, tok, seed, [chosen[i] for i in train], [rejected[i] for i in train])
            rc = scores(model, tok.pad_token_id, [chosen[i] for i in test])
            rr = scores(model, tok.pad_token_id, [rejected[i] for i in test])
            hits = 0
            for i, c, r in zip(test, rc, rr):
                got[i] = c > r
                hits += c > r
            print(f"{a.trainer} seed {seed} fold {fold + 1}/{a.folds}: {hits / len(test):.3f} on "
                  f"{len(test)} pairs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        right.append(got)

    print(json.dumps({
        "options": (f"trl {trl.__version__} RewardTrainer, lr {a.lr:g}" if a.trainer == "trl"
                    else f"plain PyTorch {torch.__version__} loop, mean pooling, AdamW, lr {a.lr:g}"),
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
