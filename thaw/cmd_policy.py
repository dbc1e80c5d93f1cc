"""``thaw policy``: validate a policy file, print its JSON Schema, the built-in default, and which
runtime honours which setting."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: ``--runtime`` values -> :class:`policy_file.support.Runtime` values.
_RUNTIMES = {"up": "thaw up", "knative": "thaw knative", "sim": "thaw sim"}
_NAME = {v: k for k, v in _RUNTIMES.items()}

HELP = """\
The policy file is the local stack's one YAML file (`thaw up --config FILE`): where the
activator listens, how often the autoscaler decides, and for each model its OpenAI name, its
engine (real vLLM or the emulator) and its autoscaling policy. Knative's defaults apply where the
concept is Knative's (stable window 60 s, panic window 10 %, panic threshold 200 %, scale-to-zero
grace 30 s, ...). Unknown keys are errors.

The same file serves the three runtimes (`thaw up`, `thaw knative` controller / render /
gateway, `thaw sim`). A setting a runtime does not honour yet is refused by that runtime when
set to anything but its default (at start and at reload), naming the key, the value and why;
sections that configure another runtime (`cluster:` for `thaw up`, `cache:` on a cluster, the
engines for the simulator) are accepted and left to it.

subcommands:
  check FILE     validate FILE: exit 0 and one summary line per model, or exit 1 and every error
                 as `field.path (line N): value V: what is accepted`; --runtime also refuses
                 what that runtime does not honour
  schema         the JSON Schema of the file (every field, its default and description)
  show-default   the built-in policy `thaw up` uses without --config (the tiny Llama on real
                 vLLM, 0..1 replicas); a commented starting point
  support        which runtime honours which key (the README's table)

examples:
  thaw policy show-default > thaw.yaml       # start from the default
  thaw policy check thaw.yaml
  thaw policy check --runtime knative thaw.yaml
  thaw policy support
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
    check.add_argument(
        "--runtime",
        choices=sorted(_RUNTIMES),
        default=None,
        help="also refuse what this runtime does not honour, as it does at load (default: "
        "list, without failing, what each runtime would refuse)",
    )
    check.set_defaults(func=_check)
    support = sub.add_parser(
        "support",
        help="print which runtime honours which policy key",
        description="Print, for every key of the policy file, whether thaw up, thaw knative "
        "and thaw sim honour it, refuse it (when set to anything but its default), or leave it "
        "to another runtime; the README's table, as Markdown.",
        epilog="example:\n  thaw policy support",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    support.set_defaults(func=_support)
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
    from policy_file.load import PolicyError, load_policy, parse_policy
    from policy_file.summary import summarize
    from policy_file.support import Runtime

    runtime = Runtime(_RUNTIMES[args.runtime]) if args.runtime else None
    try:
        config = load_policy(args.file, runtime)
    except PolicyError as e:
        print(str(e), file=sys.stderr)
        return 1
    n = len(config.models)
    print(f"{args.file}: valid; {n} model{'s' if n != 1 else ''}, listen "
          f"{config.listen.host}:{config.listen.port}, tick {config.tick_s:g} s")  # fmt: skip
    for line in summarize(config):
        print(f"  {line}")
    if runtime is None:
        text = Path(args.file).read_text(encoding="utf-8")
        for rt in Runtime:
            try:
                parse_policy(text, args.file, rt)
            except PolicyError as e:
                print(f"  refused by {rt.value} (thaw policy check --runtime "
                      f"{_NAME[rt.value]}):")  # fmt: skip
                for err in e.errors:
                    print(f"    {err}")
    return 0


def _support(args: argparse.Namespace) -> int:
    from policy_file.support import markdown_table

    sys.stdout.write(markdown_table())
    return 0


def _schema(args: argparse.Namespace) -> int:
    from policy_file.load import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=args.indent))
    return 0


def _show_default(args: argparse.Namespace) -> int:
    from policy_file.load import default_config_path

    sys.stdout.write(default_config_path().read_text(encoding="utf-8"))
    return 0
