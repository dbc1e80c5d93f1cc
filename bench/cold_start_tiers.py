"""Time to first token from zero, by tier, on the local stack with real vLLM CPU (or the emulator).

Three ways a request at zero gets a replica, measured in one run on the same model:

- ``remote``: the model (``engine.model: s3://...``) is not on this node; ``thaw up`` pulls it from
  S3 (SeaweedFS on 127.0.0.1) through the model cache, then cold-starts the engine;
- ``local_disk``: the model is on local disk; ``thaw up`` cold-starts the engine;
- ``wake``: the warm pool put the replica to sleep on scale-down; the request wakes it.

Prints each TTFT (client side: request sent at zero to first token) and its ratio to the
``local_disk`` baseline. On CPU vLLM's sleep only pauses the engine, which is exactly what makes the
wake tier fast here; on GPU level 1 adds the host-to-GPU weight copy.

    .venv/bin/python bench/cold_start_tiers.py                 # real vLLM CPU, tiny Llama
    .venv/bin/python bench/cold_start_tiers.py --engine emulator
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cache_servers import S3Server
from procs import child, free_port, thaw_argv, wait_http_ok


def first_token_s(base: str, model: str) -> float:
    """Seconds from sending a streamed chat request to its first content chunk."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "stream": True,
        }
    ).encode()
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", body, {"content-type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if line.startswith(b"data: ") and b'"content"' in line:
                return time.perf_counter() - t0
    raise RuntimeError("no content chunk in the stream")


def metric(base: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise TimeoutError("condition not met")


def run_stack(
    tmp: Path, engine: str, uri: str, s3: S3Server, measure_wake: bool
) -> tuple[list[float], str]:
    """One ``thaw up`` serving ``uri`` through the cache in ``tmp/cache``: TTFT from zero, then,
    if asked, TTFT after the warm pool put the replica to sleep. Also the stack's log."""
    port = free_port()
    model = "bench-model"
    if engine == "vllm":
        eng = f"{{kind: vllm, model: '{uri}', startup_timeout_s: 600}}"
    else:
        eng = f"{{kind: emulator, model: '{uri}', emulator: {{load_time_s: 2.0}}}}"
    cfg = tmp / f"thaw-{port}.yaml"
    cfg.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.5
models:
  - name: {model}
    engine: {eng}
    autoscaling: {{min_replicas: 0, max_replicas: 1, stable_window_s: 6,
                   scale_to_zero_grace_s: 1, metrics_stale_after_s: 30}}
    warm_pool: {{enabled: true, sleep_level: 1, max_sleeping: 1}}
cache: {{dir: '{tmp / "cache"}', s3_endpoint_url: '{s3.endpoint}'}}
"""
    )
    base = f"http://127.0.0.1:{port}"
    out = []
    argv = thaw_argv("up", "--config", str(cfg), "--work-dir", str(tmp / "w"))
    log = tmp / f"up-{port}.log"
    with child(argv, env=s3.env, log_path=log) as proc:
        wait_http_ok(f"{base}/health", 60, proc)
        out.append(first_token_s(base, model))
        if measure_wake:
            wait_until(
                lambda: metric(base, "thaw_model_replicas", model=model, state="sleeping") == 1,
                120,
            )
            out.append(first_token_s(base, model))
            assert metric(base, "thaw_cold_starts_total", model=model, tier="wake") == 1
    return out, log.read_text()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=["vllm", "emulator"], default="vllm")
    args = p.parse_args()

    from cache_servers import seaweed_server  # the tests' SeaweedFS launcher

    from model_cache.push import push
    from model_cache.s3 import parse_s3_uri
    from model_cache.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="tiers-") as d:
        tmp = Path(d)
        src = build_tiny_llama(tmp / "src")
        results: dict[str, float] = {}
        with seaweed_server(tmp / "weed") as s3:
            uri = f"s3://{s3.bucket}/tiny"
            push(src, parse_s3_uri(uri), s3.client(), name="bench-model")  # = the served name
            # 1st stack: the cache is empty -> remote; then the warm pool -> wake
            (results["remote"], results["wake"]), log1 = run_stack(
                tmp, args.engine, uri, s3, measure_wake=True
            )
            assert "pulled from the cache" in log1, log1
            # 2nd stack, same cache dir: the model is on local disk
            (results["local_disk"],), log2 = run_stack(tmp, args.engine, uri, s3, False)
            assert "found from the cache" in log2, log2
        base = results["local_disk"]
        print(f"TTFT from zero by tier through `thaw up` ({args.engine}; tiny Llama, SeaweedFS):")
        for tier in ("wake", "local_disk", "remote"):
            print(f"  {tier:<11} {results[tier]:8.2f} s   {results[tier] / base:7.3f}x local_disk")


if __name__ == "__main__":
    main()
