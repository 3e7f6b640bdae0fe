"""Writes tests/fixtures/tiny_bert: a tiny random BertForSequenceClassification
(1 output), a padded batch of 3 preference pairs, and the Bradley-Terry loss and
every parameter's gradient as PyTorch computes them (dropout off).

duel's own forward/backward is checked against this file. Run once with torch and
transformers installed (not needed by the tests):
    python scripts/make-grad-fixture.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny_bert")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)
cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
                 num_labels=1, layer_norm_eps=1e-12)
model = BertForSequenceClassification(cfg)
# Non-trivial norms and biases, so that every gradient path is exercised.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            p.add_(0.1 * torch.randn_like(p))
model.eval()  # dropout off; gradients still flow

lengths = [9, 5, 12, 7, 3, 12]
T = max(lengths)
ids = torch.zeros(len(lengths), T, dtype=torch.long)
mask = torch.zeros(len(lengths), T, dtype=torch.long)
for i, n in enumerate(lengths):
    ids[i, :n] = torch.randint(1, cfg.vocab_size, (n,))
    ids[i, 0] = 2  # a [CLS]-like first token
    mask[i, :n] = 1
margin = torch.tensor([0.0, 1.0 / 3.0, 1.0])

r = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
n = len(lengths) // 2
loss = -F.logsigmoid(r[:n] - r[n:] - margin).mean()
loss.backward()

save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
          os.path.join(OUT, "model.safetensors"))
save_file({k: p.grad.contiguous() for k, p in model.named_parameters()},
          os.path.join(OUT, "grads.safetensors"))
cfg.architectures = ["BertForSequenceClassification"]
cfg.to_json_file(os.path.join(OUT, "config.json"))
with open(os.path.join(OUT, "case.json"), "w") as f:
    json.dump({"ids": ids.tolist(), "mask": mask.tolist(), "margin": margin.tolist(),
               "rewards": r.tolist(), "loss": loss.item()}, f)
print("wrote", OUT, "loss", loss.item())
