"""``thaw policy``: validate a policy file, print its JSON Schema, print the built-in default."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = """\
The policy file is the local stack's one YAML file (`thaw up --config FILE`): where the
activator listens, how often the autoscaler decides, and for each model its OpenAI name, its
engine (real vLLM or the emulator) and its autoscaling policy. Knative's defaults apply where the
concept is Knative's (stable window 60 s, panic window 10 %, panic threshold 200 %, scale-to-zero
grace 30 s, ...). Unknown keys are errors.

subcommands:
  check FILE     validate FILE: exit 0 and one summary line per model, or exit 1 and every error
                 as `field.path (line N): value V: what is accepted`
  schema         the JSON Schema of the file (every field, its default and description)
  show-default   the built-in policy `thaw up` uses without --config (the tiny Llama on real
                 vLLM, 0..1 replicas); a commented starting point

examples:
  thaw policy show-default > thaw.yaml       # start from the default
  thaw policy check thaw.yaml
  thaw policy schema | python -m json.tool | less
  thaw up --config thaw.yaml
"""

_MINIMAL_EXAMPLE = """\
a minimal file (every other key has a default):
  models:
    - name: tiny-llama
      engine: {kind: emulator}
      autoscaling: {min_replicas: 0, max_replicas: 2}
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="validate a policy file / print its JSON Schema or the default",
        description=HELP,
        epilog=_MINIMAL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check",
        help="validate a policy file (exit 0, or 1 with every error)",
        description="Validate a policy file. Exit 0 printing one line per model, or exit 1 "
        "printing every error with its field path, YAML line, value and what is accepted.",
        epilog="example:\n  thaw policy check thaw.yaml\n\n" + _MINIMAL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="the policy file (YAML)")
    check.set_defaults(func=_check)
    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of the policy file",
        description="Print the policy file's JSON Schema (draft 2020-12) on stdout.",
        epilog="example:\n  thaw policy schema > thaw-policy.schema.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument(
        "--indent", type=int, default=2, help="JSON indentation (default: %(default)s)"
    )
    schema.set_defaults(func=_schema)
    default = sub.add_parser(
        "show-default",
        help="print the built-in policy file",
        description="Print the built-in policy `thaw up` serves without --config.",
        epilog="example:\n  thaw policy show-default > thaw.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default.set_defaults(func=_show_default)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> int:
    from policy_file.load import PolicyError, load_policy
    from policy_file.summary import summarize

    try:
        config = load_policy(args.file)
    except PolicyError as e:
        print(str(e), file=sys.stderr)
        return 1
    n = len(config.models)
    print(f"{args.file}: valid; {n} model{'s' if n != 1 else ''}, listen "
          f"{config.listen.host}:{config.listen.port}, tick {config.tick_s:g} s")  # fmt: skip
    for line in summarize(config):
        print(f"  {line}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from policy_file.load import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=args.indent))
    return 0


def _show_default(args: argparse.Namespace) -> int:
    from policy_file.load import default_config_path

    sys.stdout.write(default_config_path().read_text(encoding="utf-8"))
    return 0
