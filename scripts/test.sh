#!/usr/bin/env bash
# Set up Thaw (scripts/setup.sh) and run every check CI runs: ruff, mypy --strict, the import
# layering contracts, and the whole pytest suite including the end-to-end tests on real vLLM.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -m "not vllm"   pass pytest options (here: skip the real-vLLM tests)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
bin=.venv/bin

echo "== ruff"
"$bin/ruff" check .
echo "== mypy --strict"
"$bin/mypy"
echo "== import layering"
"$bin/lint-imports"
echo "== pytest"
"$bin/python" -m pytest "$@"
