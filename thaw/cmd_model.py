"""``thaw model``: build the tiny test model (``thaw model build-tiny DIR``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = """\
Models for trying Thaw without downloading anything.

subcommands:
  build-tiny DIR   write a tiny random-weight Llama that real vLLM loads on CPU in seconds

example:
  thaw model build-tiny .thaw/models/tiny-llama
"""

BUILD_TINY_HELP = """\
Write a tiny Llama into DIR, offline: config.json (LlamaForCausalLM: hidden 128, intermediate
256, 2 layers, 2 attention heads, 1 KV head, head_dim 64, vocab 2048, 2048 positions, bfloat16),
model.safetensors (random bfloat16 weights from --seed, 1.6 MB), a byte-level BPE tokenizer trained
on a small built-in corpus (tokenizer.json, tokenizer_config.json with a Llama-3-style chat
template, special_tokens_map.json) and generation_config.json. Its output is gibberish; it exists
so that vLLM, the activator and the autoscaler can be exercised end to end on a CPU.

--shape 8b writes Llama 3 8B's architecture instead (hidden 4096, intermediate 14336, 32 layers,
32 attention heads, 8 KV heads, head_dim 128, vocab 128256 with reserved tokens past what the
corpus trains, 8192 positions): 8.0 B random bfloat16 parameters, 16 GB on disk (one
model.safetensors, each tensor a seeded random block repeated, written at disk speed with a
progress bar). It is for measuring loads and wakes at a real size on a GPU without downloading
anything (bench/gpu_warm_pool.py); on a CPU only build it if you mean to load it.

The same seed gives byte-identical files. DIR must be missing or empty unless --force, which
replaces its contents. Files are written to a temporary sibling directory and renamed into place,
so an interrupted build leaves nothing under DIR.

examples:
  thaw model build-tiny .thaw/models/tiny-llama
  thaw model build-tiny /tmp/tiny --seed 7 --force
  thaw model build-tiny /mnt/nvme/llama-8b-random --shape 8b
  thaw engine --model .thaw/models/tiny-llama          # serve it with real vLLM
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "model",
        help="build the tiny test model (offline)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda _args: _usage(parser))
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    build = sub.add_parser(
        "build-tiny",
        help="write a tiny random-weight Llama that vLLM CPU loads",
        description=BUILD_TINY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("dir", metavar="DIR", help="directory to write (missing or empty)")
    build.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)"
    )
    build.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty DIR"
    )
    build.add_argument(
        "--shape",
        choices=("tiny", "8b"),
        default="tiny",
        help="architecture: tiny (1.6 MB, vLLM CPU loads it in seconds) or 8b (Llama 3 8B's, "
        "16 GB) (default: %(default)s)",
    )
    build.set_defaults(func=_build_tiny)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _build_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from kernel.clock import SystemClock
    from model_cache.tiny_model import (
        SHAPES,
        TILE_ABOVE_PARAMETERS,
        TinyModelError,
        build_tiny_llama,
        num_parameters,
    )

    clock = SystemClock()
    started_s = clock.monotonic()
    shape = SHAPES[args.shape]
    params = num_parameters(shape)
    bar = tqdm(
        total=params * 2,
        unit="B",
        unit_scale=True,
        desc=f"weights ({args.shape})",
        disable=params <= TILE_ABOVE_PARAMETERS or not sys.stderr.isatty(),
    )
    try:
        with bar:
            out = build_tiny_llama(
                Path(args.dir),
                seed=args.seed,
                shape=shape,
                overwrite=args.force,
                progress=bar.update,
            )
    except TinyModelError as e:
        print(f"thaw model build-tiny: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"thaw model build-tiny: cannot write {args.dir}: {e}", file=sys.stderr)
        return 1
    elapsed_s = clock.monotonic() - started_s
    size_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    what = "the tiny Llama" if args.shape == "tiny" else f"a random Llama of {args.shape} shape"
    print(
        f"built {what} in {out} ({size_bytes / 1e6:.1f} MB, {params / 1e9:.3g} B parameters, "
        f"seed {args.seed}, {elapsed_s:.2f} s)\nserve it: thaw engine --model {out}"
    )
    return 0
