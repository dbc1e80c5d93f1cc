"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` in the example tests: the
same command line, served by ``thaw emulator`` (tests/test_examples.py puts this package first
on PYTHONPATH, so example commands that start vLLM start the emulator instead, in seconds).

vLLM's flags are read as vLLM reads them; those the emulator models are passed on
(``--max-model-len``, ``--max-num-seqs``), the rest (``--enforce-eager``, ...) are accepted and
ignored. The model directory must exist, as vLLM would require."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thaw.cli import main


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vllm (emulated)")
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", "--served_model_name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", "--max_model_len", type=int, default=None)
    p.add_argument("--max-num-seqs", "--max_num_seqs", type=int, default=None)
    args, _ignored = p.parse_known_args(argv)
    if not Path(args.model).is_dir():
        print(f"vllm (emulated): no model directory {args.model}", file=sys.stderr)
        return 1
    flags = ["emulator", "--host", args.host, "--port", str(args.port), "--load-time-s", "1"]
    flags += ["--served-model-name", args.served_model_name or args.model]
    if args.max_model_len is not None:
        flags += ["--max-model-len-tokens", str(args.max_model_len)]
    if args.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
    return main(flags)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
