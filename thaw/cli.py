"""The ``thaw`` command line: one console script, one subcommand module each.

Each ``thaw/cmd_*.py`` module defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace, returning an exit code). Heavy imports happen
inside ``func`` so that ``thaw --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from thaw import __version__

# The subcommand modules, in the order ``thaw --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "thaw.cmd_up",
    "thaw.cmd_engine",
    "thaw.cmd_emulator",
    "thaw.cmd_model",
    "thaw.cmd_policy",
    "thaw.cmd_sim",
    "thaw.cmd_cache",
    "thaw.cmd_knative",
)

DESCRIPTION = """\
Thaw: serverless LLM inference that costs nothing while a model is idle and answers the first
request after idle in seconds.

Start here:
  thaw up                         the local stack (activator + autoscaler + engines) on 127.0.0.1
  thaw model build-tiny DIR       a tiny Llama that real vLLM loads on CPU, built offline
  thaw engine --model DIR         one real vLLM OpenAI server on 127.0.0.1
  thaw emulator                   a vLLM-compatible engine emulator with a configurable speed

Every subcommand explains itself: thaw SUBCOMMAND --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thaw", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"thaw {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log to stderr (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
