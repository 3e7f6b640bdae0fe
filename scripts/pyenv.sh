#!/usr/bin/env bash
# Creates .venv with the Python packages the tests use to check that our exports load
# in the Hugging Face ecosystem. Idempotent: does nothing when the venv is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.duel-requirements
REQ=scripts/requirements-test.txt
if [ -f "$STAMP" ] && cmp -s "$STAMP" "$REQ"; then
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$REQ"
cp "$REQ" "$STAMP"
