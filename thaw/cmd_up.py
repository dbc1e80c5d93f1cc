"""``thaw up``: the local stack (activator + autoscaler + local actuator) on 127.0.0.1."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = """\
Start Thaw's local stack in one process: the OpenAI-compatible activator, the autoscaler loop and
a local actuator that runs engine replicas (real vLLM, or the emulator) as child processes.

Models start at zero replicas. The first request for a model is held in the activator's buffer
while a replica cold-starts, then answered; after the scale-to-zero grace period without demand
the replica is stopped again. Every decision that changes a replica count is logged with its
reason. Ctrl-C (or SIGTERM) stops every engine before exiting.

Without --config, the built-in policy serves `tiny-llama` (a tiny random-weight Llama built
offline into WORK_DIR/models on first use) on real vLLM CPU, min 0, max 1 replicas.

examples:
  thaw up
  thaw up --config my-models.yaml --port 9000
  curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}'
  curl http://127.0.0.1:8080/metrics | grep thaw_

See `thaw policy show-default` for the file format and `thaw policy check FILE` to validate one.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="run the local stack: activator + autoscaler + engines on 127.0.0.1",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="policy file (YAML) with the models, their engines and autoscaling; reloaded on "
        "change (default: the built-in tiny-llama policy)",
    )
    p.add_argument("--host", default=None, help="listen address (default: the file's listen.host)")
    p.add_argument(
        "--port", type=int, default=None, help="listen port (default: the file's listen.port)"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".thaw"),
        help="where engine logs and built models go (default: %(default)s)",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer KEY' on everything but /health and /metrics; one "
        "key per line (default: the comma-separated THAW_API_KEYS variable, else no keys)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os
    import signal
    import sys

    from kernel.clock import SystemClock
    from local_stack.stack import LocalStack
    from policy_file.load import PolicyError, default_config_path, load_policy
    from policy_file.support import Runtime
    from thaw.api_keys import api_keys
    from thaw.fd_limit import raise_open_files_limit

    raise_open_files_limit()  # one descriptor per connection; engines inherit it
    try:
        keys = api_keys(args.api_key_file, os.environ.get("THAW_API_KEYS"))
    except (OSError, ValueError) as e:
        print(f"thaw up: {e}", file=sys.stderr)
        return 2
    path: Path = args.config or default_config_path()
    try:
        config = load_policy(path, Runtime.LOCAL)
    except PolicyError as e:
        print(f"thaw up: {path}: invalid policy\n{e}", file=sys.stderr)
        return 1
    listen = config.listen.model_copy(
        update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    )
    config = config.model_copy(update={"listen": listen})

    async def main() -> None:
        stack = LocalStack(
            config,
            SystemClock(),
            work_dir=args.work_dir,
            config_path=args.config,
            api_keys=keys,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        base = f"http://{listen.host}:{listen.port}"
        names = ", ".join(f"{m.name} ({m.engine.kind})" for m in config.models)
        logging.getLogger("thaw.up").info(
            "Thaw is up on %s/v1 serving %s. Try:\n"
            "  curl %s/v1/chat/completions -H 'content-type: application/json' "
            '-d \'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}\'',
            base,
            names,
            base,
            config.models[0].name,
        )
        await stack.run(stop)

    try:
        import uvloop  # the activator's hot path is ~2x cheaper on it
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0
