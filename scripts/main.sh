#!/usr/bin/env bash
# The main job on the built-in default: SmolLM2-135M, packaged corpora, 16 clients.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
OUT=${OUT:-runs/main}
"$PY" -m secprune prune --clients 16 --nsamples 32 --seqlen 512 --sparsity 0.5 --save-client-masks \
  --out "$OUT/prune" --overwrite "$@"
