"""``thaw emulator``: a vLLM-compatible engine emulator with the engine model's speed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = """\
Serve vLLM's OpenAI HTTP API without a model or a GPU: /v1/completions and /v1/chat/completions
(with SSE streaming), /v1/models, /health, /metrics (vLLM's metric names), /sleep?level=1|2,
/wake_up, /is_sleeping and /version. Generated text is filler words (deterministic for a seed);
the timing is the engine model's: prefill at --prefill-tokens-per-s, one decode step of
--decode-base-s plus --decode-per-seq-s per extra running sequence, at most --max-num-seqs running
(more wait: vllm:num_requests_waiting), a KV cache of --kv-capacity-tokens. No answer comes
faster than that model allows. /health answers 503 for --load-time-s after start, then 200.
/sleep pauses generation (running requests resume on /wake_up; ?mode=abort ends them instead).

An emulated GPU (--gpu-id ID --gpu-memory-bytes N): emulators started with the same id share one
ledger of that GPU's memory (a file under --gpu-ledger-dir, under an exclusive lock). Awake, an
engine holds --gpu-memory-utilization x N bytes; asleep, none. A start that does not fit exits
with status 1 (as vLLM does when the GPU lacks free memory), a /wake_up that does not fit answers
500 and the engine stays asleep: a plan that wakes before it sleeps fails as it would on a GPU.

Thaw's engine guard (the switch: THAW_ENGINE_CREDENTIAL_FILE, the path of a file holding Thaw's
credential): /sleep, /wake_up, /is_sleeping, /collective_rpc, /reset_prefix_cache and vLLM's
other control paths answer 403 unless the request carries that credential in the
thaw-engine-credential header, and GET /thaw/ready answers 200 only while the engine is loaded
and awake (503 asleep), as vLLM with Thaw's --middleware does.

Options come from the built-in defaults, then --config FILE (YAML or JSON whose keys are the
option names with underscores, e.g. decode_base_s: 0.03), then the flags; the last one wins.
SIGTERM stops the server cleanly (in-flight requests get --graceful-shutdown-s to finish).

examples:
  thaw emulator --port 8000 --served-model-name tiny-llama --load-time-s 5
  thaw emulator --config engine.yaml --max-num-seqs 4
  thaw emulator --gpu-id 0 --gpu-memory-bytes 80000000000 --gpu-memory-utilization 0.45
  curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "tiny-llama", "prompt": "hello", "max_tokens": 8}'
  curl http://127.0.0.1:8000/metrics | grep vllm:num_requests
"""

# (option name as in the config file, type, help). Kept in step with EmulatorConfig's fields by
# tests/test_emulator_config.py; the help repeats each default so that --help teaches it.
_SERVER_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("host", str, "address to listen on (default: 127.0.0.1)"),
    ("port", int, "TCP port to listen on (default: 8000)"),
    ("seed", int, "seed of the filler text (default: 0)"),
    (
        "default_max_tokens",
        int,
        "output tokens of a chat request without max_tokens, ending as finish_reason 'stop' "
        "(default: 64; completions default to 16 like vLLM)",
    ),
    (
        "graceful_shutdown_s",
        int,
        "on SIGTERM, seconds in-flight requests may still run (default: 5)",
    ),
    (
        "gpu_id",
        str,
        "the emulated GPU this engine runs on: emulators with the same id share one GPU-memory "
        "ledger that refuses a start or wake that would not fit (default: none)",
    ),
    ("gpu_memory_bytes", int, "memory of the emulated GPU, bytes, with --gpu-id (default: none)"),
    (
        "gpu_memory_utilization",
        float,
        "share of the GPU's memory this engine holds awake, as vLLM's flag (default: 0.9)",
    ),
    (
        "gpu_ledger_dir",
        str,
        "directory of the GPU ledgers (default: none, meaning thaw-gpu-ledger in the temporary "
        "directory)",
    ),
)
_PERF_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("load_time_s", float, "seconds from start until /health answers 200 (default: 2.0)"),
    ("prefill_tokens_per_s", float, "prompt tokens prefilled per second (default: 8000.0)"),
    ("decode_base_s", float, "one decode step with one running sequence (default: 0.02)"),
    (
        "decode_per_seq_s",
        float,
        "added to a decode step per running sequence beyond the first (default: 0.001)",
    ),
    ("kv_capacity_tokens", int, "tokens the KV cache holds (default: 16384)"),
    ("max_num_seqs", int, "most sequences running at once; more wait (default: 8)"),
    (
        "max_model_len_tokens",
        int,
        "longest prompt + output of one request; alias --max-model-len (default: 4096)",
    ),
    ("sleep_level1_s", float, "time to sleep at level 1, weights offloaded (default: 0.1)"),
    ("sleep_level2_s", float, "time to sleep at level 2, weights discarded (default: 0.05)"),
    ("wake_level1_s", float, "time to wake from level 1 (default: 0.2)"),
    ("wake_level2_s", float, "time to wake from level 2, weights reloaded (default: 1.0)"),
)
OPTIONS = _SERVER_OPTIONS + _PERF_OPTIONS


def register(sub: Any) -> None:
    p = sub.add_parser(
        "emulator",
        help="a vLLM-compatible engine emulator (same API, metrics, sleep/wake)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON file of options (keys as below, with underscores); flags override it",
    )
    p.add_argument(
        "--served-model-name",
        dest="served_model_name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="model name(s) the server answers to; the first labels the metrics "
        "(default: thaw-emulator)",
    )
    server = p.add_argument_group("server")
    perf = p.add_argument_group("engine model (engine.perf_model.EnginePerf)")
    for group, options in ((server, _SERVER_OPTIONS), (perf, _PERF_OPTIONS)):
        for name, kind, text in options:
            flags = [f"--{name.replace('_', '-')}"]
            if name == "max_model_len_tokens":
                flags.append("--max-model-len")
            group.add_argument(
                *flags, dest=name, type=kind, default=None, metavar=_metavar(name, kind), help=text
            )
    p.set_defaults(func=run)


def _metavar(name: str, kind: type) -> str:
    special = {"gpu_id": "ID", "gpu_ledger_dir": "DIR", "gpu_memory_utilization": "RATIO"}
    if name in special:
        return special[name]
    if name.endswith("_per_s"):
        return "RATE"
    if name.endswith("_s"):
        return "SECONDS"
    return "N" if kind is int and name != "port" else name.upper()


def run(args: argparse.Namespace) -> int:
    from kernel.clock import SystemClock

    clock = SystemClock()
    started_s = clock.monotonic()

    import sys

    from engine.emulator.config import EmulatorConfigError, load_config
    from engine.emulator.server import serve
    from thaw.fd_limit import raise_open_files_limit

    raise_open_files_limit()  # the activator may hold up to a thousand connections to it
    overrides = {name: getattr(args, name) for name, _, _ in OPTIONS}
    overrides["served_model_name"] = args.served_model_name
    try:
        config = load_config(args.config, overrides)
    except EmulatorConfigError as e:
        print(f"thaw emulator: {e}", file=sys.stderr)
        return 2
    import os

    from engine.vllm_site.thaw_engine_guard import CREDENTIAL_FILE_ENV

    return serve(config, clock, started_s, credential_file=os.environ.get(CREDENTIAL_FILE_ENV))
