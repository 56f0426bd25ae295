#!/usr/bin/env bash
# The spend-ceiling benchmark with LiteLLM beside trilemma, in an environment of its own:
# LiteLLM is what we compare against, not something trilemma depends on.
# LITELLM_LOCAL_MODEL_COST_MAP keeps LiteLLM from fetching its price map at import.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-benchmarks/.venv-litellm}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[gateway]' litellm
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" benchmarks/bench_budget_overrun.py "$@"
