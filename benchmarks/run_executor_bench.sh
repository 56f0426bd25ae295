#!/usr/bin/env bash
# The executor benchmark with LangGraph beside it, in an environment of its own:
# LangGraph is what we compare against, not something trilemma depends on.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-benchmarks/.venv-langgraph}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e . langgraph langgraph-checkpoint-sqlite
"$VENV/bin/python" benchmarks/bench_executor.py "$@"
