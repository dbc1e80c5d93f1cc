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

# Prometheus (Debian's package) is a real part of the history tests; started by hand on 127.0.0.1.
# curl runs the README's and --help's curl examples (tests/test_examples.py).
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]} (apt, --no-install-recommends)"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== ruff"
"$bin/ruff" check .
echo "== mypy --strict"
"$bin/mypy"
echo "== import layering"
"$bin/lint-imports"
echo "== pytest"
"$bin/python" -m pytest "$@"
