#!/usr/bin/env bash
# The main job on the built-in default (SmolLM2-135M, packaged corpora, 16 clients, Wanda 50%):
# federated pruning, then every privacy attack and audit, then the report (HTML + JSON + Markdown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
OUT=${OUT:-runs/main}
"$PY" -m secprune audit --model smollm2-135m --clients 16 --nsamples 32 --seqlen 512 --sparsity 0.5 \
  --out "$OUT/audit" --report "$OUT/report" --overwrite "$@"
echo "report: $OUT/report/report.html"
