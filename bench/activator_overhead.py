"""What the activator costs on the request path: an upstream direct vs through the activator.

Same load for both (N requests in flight, non-streamed and streamed), direct and proxied runs
alternated in pairs so machine noise hits both alike; prints added p50/p99 latency, the
throughput ratio, and the activator's own CPU time per request (from /proc, so it holds even on a
busy machine). If ``nginx`` is on PATH it is measured too, as the floor of what any proxy costs.
The upstream is ``thaw emulator`` (default) or ``fixed``: a bare aiohttp server that answers in
``--upstream-ms`` with a canned completion (3 SSE events when streamed), which isolates the proxy's
cost from the emulator's own CPU use.

    .venv/bin/python bench/activator_overhead.py                  # 6 pairs, 64 in flight
    .venv/bin/python bench/activator_overhead.py --upstream fixed --pairs 6 --requests 1000

Goal on a 2-core machine (issue "Activator"): p50 +1.5 ms or less, p99 +10 ms or less, throughput
at least 0.9x direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import child, free_port, thaw_argv, wait_http_ok

from activator.core import Activator
from activator.server import serve
from activator.types import ModelLimits, Replica
from kernel.clock import SystemClock

MODEL = "bench"


class Fixed:
    def __init__(self, url: str) -> None:
        self.replicas = [Replica("r1", url)]

    def ready_replicas(self, model: str) -> Sequence[Replica]:
        return self.replicas


class NoDemand:
    async def poke(self, model: str) -> None:
        return None


async def load(base: str, n: int, concurrency: int, stream: bool) -> tuple[list[float], float]:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 1, "stream": stream}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                async with s.post(f"{base}/v1/completions", json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, n / wall


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_conf(listen: int, upstream: int, root: Path) -> Path:
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }} }}
}}
"""
    )
    return conf


async def run(args: argparse.Namespace) -> None:
    up_port, act_port = free_port(), free_port()
    if args.upstream == "fixed":
        up_argv = [sys.executable, __file__, "--serve-fixed", str(up_port), str(args.upstream_ms)]
    else:
        up_argv = thaw_argv(
            "emulator",
            "--port",
            str(up_port),
            "--served-model-name",
            MODEL,
            "--load-time-s",
            "0",
            "--prefill-tokens-per-s",
            "1000000",
            "--decode-base-s",
            str(args.upstream_ms / 1000),
            "--max-num-seqs",
            "256",
        )
    with child(up_argv) as proc:
        wait_http_ok(f"http://127.0.0.1:{up_port}/health", 30, proc)
        direct = f"http://127.0.0.1:{up_port}"
        act_argv = [sys.executable, __file__, "--serve-activator", str(act_port), direct]
        act_proc = subprocess.Popen(act_argv, start_new_session=True)  # noqa: ASYNC220
        wait_http_ok(f"http://127.0.0.1:{act_port}/health", 30, act_proc)
        targets = {"direct": direct, "activator": f"http://127.0.0.1:{act_port}"}
        nginx = None
        tmp = tempfile.TemporaryDirectory()
        if shutil.which("nginx"):
            ng_port = free_port()
            conf = nginx_conf(ng_port, up_port, Path(tmp.name))
            nginx = subprocess.Popen(["nginx", "-c", str(conf)])  # noqa: ASYNC220
            wait_http_ok(f"http://127.0.0.1:{ng_port}/health", 10)
            targets["nginx"] = f"http://127.0.0.1:{ng_port}"
        try:
            for stream in (False, True):
                await load(direct, 200, args.concurrency, stream)  # warm-up
                lat: dict[str, list[float]] = {k: [] for k in targets}
                thr: dict[str, list[float]] = {k: [] for k in targets}
                act_cpu_s = 0.0
                for _ in range(args.pairs):
                    for name, base in targets.items():
                        cpu0_s = cpu_s(act_proc.pid)
                        ls, t = await load(base, args.requests, args.concurrency, stream)
                        if name == "activator":
                            act_cpu_s += cpu_s(act_proc.pid) - cpu0_s
                        lat[name] += ls
                        thr[name].append(t)
                d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
                dthr = statistics.median(thr["direct"])
                print(
                    f"\n{'streamed' if stream else 'non-streamed'}: {args.concurrency} in "
                    f"flight, {args.upstream} upstream {args.upstream_ms} ms, {args.pairs} "
                    f"alternated runs of {args.requests}; activator CPU "
                    f"{act_cpu_s / (args.pairs * args.requests) * 1e6:.0f} us/request"
                )
                print(
                    f"  {'path':<10} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'+p50':>7} "
                    f"{'p99 ms':>8} {'+p99':>7}"
                )
                for name in targets:
                    p50, p99 = pct(lat[name], 0.5), pct(lat[name], 0.99)
                    t = statistics.median(thr[name])
                    print(
                        f"  {name:<10} {t:8.0f} {t / dthr:6.2f} {p50 * 1e3:8.1f} "
                        f"{(p50 - d50) * 1e3:+7.1f} {p99 * 1e3:8.1f} {(p99 - d99) * 1e3:+7.1f}"
                    )
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait()
            tmp.cleanup()
            act_proc.terminate()
            act_proc.wait()


def serve_activator(port: int, upstream: str) -> None:
    """The activator alone in its own process (on uvloop when installed), like `thaw up`."""

    async def go() -> None:
        act = Activator({MODEL: ModelLimits()}, Fixed(upstream), NoDemand(), SystemClock())
        await serve(act, "127.0.0.1", port)

    try:
        import uvloop

        uvloop.run(go())
    except ImportError:
        asyncio.run(go())


def serve_fixed(port: int, upstream_ms: float) -> None:
    """A bare upstream: answers every completion after ``upstream_ms`` with a canned body."""
    from aiohttp import web

    answer = (
        b'{"id":"cmpl-1","object":"text_completion","created":0,"model":"bench","choices":'
        b'[{"index":0,"text":" hi","finish_reason":"length"}],"usage":{"prompt_tokens":1,'
        b'"completion_tokens":1,"total_tokens":2}}'
    )
    event = (
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" hi"}]}\n\n'
    )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(upstream_ms / 1000)
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-activator":
        serve_activator(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-fixed":
        serve_fixed(int(sys.argv[2]), float(sys.argv[3]))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", type=int, default=6, help="alternated runs per path (default 6)")
    p.add_argument("--requests", type=int, default=1000, help="requests per run (default 1000)")
    p.add_argument("--concurrency", type=int, default=64, help="in flight (default 64)")
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
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
