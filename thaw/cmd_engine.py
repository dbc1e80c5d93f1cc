"""``thaw engine``: one real vLLM OpenAI server on this machine, until Ctrl-C.

Wires :mod:`model_cache.tiny_model` (the default model) to :mod:`engine.process` (the
launcher): start, print how to query it, wait for Ctrl-C or SIGTERM, stop the whole engine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL_DIR = Path(".thaw/models/tiny-llama")
DEFAULT_NAME = "tiny-llama"

HELP = """\
Start one real vLLM OpenAI-compatible server (python -m vllm.entrypoints.openai.api_server) on
HOST:PORT, wait until its /health answers 200, print the cold-start time and how to query it,
then serve until Ctrl-C or SIGTERM, and stop it with everything it started (vLLM's EngineCore and
workers included). Without --model it serves the tiny random-weight Llama, built offline into
.thaw/models/tiny-llama on first use (see `thaw model build-tiny`); its answers are gibberish.

vLLM runs with --enforce-eager and --max-model-len 2048 (unless given after --), and with
VLLM_CPU_KVCACHE_SPACE=1 (1 GiB of KV cache on CPU) and VLLM_SERVER_DEV_MODE=1 (the /sleep,
/wake_up and /is_sleeping endpoints). On 2 CPU cores a cold start takes about 45 s. Arguments
after -- go to vLLM unchanged.

examples:
  thaw engine                                   # the tiny Llama on 127.0.0.1:8000
  thaw engine --port 8001 -- --max-num-seqs 4   # pass flags to vLLM after --
  thaw engine --model /models/qwen2-0.5b --served-model-name qwen
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "engine",
        help="one real vLLM OpenAI server on 127.0.0.1 (the tiny Llama by default)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="model directory or Hugging Face id (default: the tiny Llama, built into "
        f"{DEFAULT_MODEL_DIR} if missing)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--served-model-name",
        metavar="NAME",
        default=None,
        help=f"the name requests use as `model` (default: {DEFAULT_NAME} for the tiny Llama, "
        "else vLLM's default: the --model value)",
    )
    p.add_argument(
        "--startup-timeout-s",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up if /health is not 200 by then (default: %(default)g)",
    )
    p.add_argument(
        "--stop-grace-s",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on Ctrl-C, SIGTERM to SIGKILL (default: %(default)g)",
    )
    p.add_argument(
        "--log",
        type=Path,
        default=Path(".thaw/logs/engine.log"),
        metavar="FILE",
        help="vLLM's output, appended (default: %(default)s)",
    )
    p.add_argument(
        "vllm_args",
        nargs=argparse.REMAINDER,
        metavar="-- VLLM_ARGS",
        help="arguments passed to vLLM unchanged",
    )
    p.set_defaults(func=run)


def _model_and_name(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.model is not None:
        return str(args.model), args.served_model_name
    from model_cache.tiny_model import ensure_tiny_llama

    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        print(f"building the tiny Llama into {DEFAULT_MODEL_DIR} ...", file=sys.stderr)
        ensure_tiny_llama(DEFAULT_MODEL_DIR)
    return str(DEFAULT_MODEL_DIR.resolve()), args.served_model_name or DEFAULT_NAME


def usage_text(base_url: str, name: str) -> str:
    """How to query the engine: curl and the ``openai`` client, ready to paste."""
    return f"""\
  curl {base_url}/v1/completions -H 'content-type: application/json' \\
       -d '{{"model": "{name}", "prompt": "Once upon a time", "max_tokens": 16}}'
  curl {base_url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "hi"}}]}}'
  curl -s {base_url}/metrics | grep -E '^vllm:(num_requests_waiting|kv_cache_usage_perc)'

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}/v1", api_key="unused")
  print(client.chat.completions.create(model="{name}", max_tokens=16,
        messages=[{{"role": "user", "content": "hi"}}]).choices[0].message.content)
"""


def run(args: argparse.Namespace) -> int:
    import asyncio

    from engine.process import EngineProcess, EngineStartError, vllm_spec

    extra = list(args.vllm_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    model, name = _model_and_name(args)
    spec = vllm_spec(
        model,
        port=args.port,
        host=args.host,
        served_model_name=name,
        extra_args=extra,
        startup_timeout_s=args.startup_timeout_s,
        log_path=args.log,
    )
    engine = EngineProcess(spec)
    served = name or model

    async def serve() -> int:
        import signal

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"starting vLLM on {spec.base_url} (model {model}; log: {args.log}) ...", flush=True)
        starting = asyncio.ensure_future(engine.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                print("interrupted while starting; stopping the engine", flush=True)
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                await engine.stop(args.stop_grace_s)
                return 130
            try:
                starting.result()
            except EngineStartError as e:
                print(f"thaw engine: {e}", file=sys.stderr)
                return 1
            rss_mb = engine.rss_bytes() / 2**20
            print(
                f"\nvLLM is ready on {spec.base_url}: cold start {engine.startup_s:.1f} s "
                f"(start to /health 200), {rss_mb:.0f} MB RSS over {len(engine.group_pids())} "
                f"processes. Query it:\n\n{usage_text(spec.base_url, served)}\n"
                "Ctrl-C stops it.",
                flush=True,
            )
            while not stop.is_set():
                if not engine.running:
                    print(
                        f"thaw engine: vLLM exited with status {engine.returncode}; see {args.log}",
                        file=sys.stderr,
                    )
                    await engine.stop(0.0)
                    return 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            print("stopping vLLM ...", flush=True)
            code = await engine.stop(args.stop_grace_s)
            print(f"vLLM stopped (exit status {code})", flush=True)
            return 0
        finally:
            stopping.cancel()
            await engine.stop(args.stop_grace_s)

    return asyncio.run(serve())
