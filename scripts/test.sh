#!/usr/bin/env bash
# Set up (idempotent), then run the fast suite plus the small real-model smoke tests.
# Slow tests (big sweeps) are marked `slow`: run them with  python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
# CI also installs two of the extra models and the zero-shot data, so their real-model tests run (not skip).
bash scripts/setup.sh --models gemma3-270m,qwen2.5-0.5b --zeroshot
PY=${PYTHON:-python3}
# On a shared CI machine spinning OpenMP threads make LAPACK calls (Cholesky) up to 200x slower; park them.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
"$PY" -m pytest -m "not slow" -q -p no:cacheprovider "$@"
