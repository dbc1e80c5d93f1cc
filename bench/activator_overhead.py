"""What the activator costs on the request path: an upstream direct vs through the activator,
beside two other proxies measured in the same run.

The paths, same load for each (N requests in flight, non-streamed and streamed, at each
``--concurrency``), runs alternated so machine noise hits all alike:

- ``direct``: the upstream itself, the baseline;
- ``activator``: Thaw's front door (its own process, uvloop, as ``thaw up`` runs it);
- ``minimal``: the floor of a Python data path — uvicorn + httptools + one aiohttp session on
  uvloop, reading nothing of the body but ``model`` (``json.loads``), no routing, no metrics,
  no timeouts, no buffer (``--serve-minimal``);
- ``nginx``: if ``nginx`` is on PATH (Debian's package), the floor of any proxy.

It prints each path's throughput and its ratio to direct, added p50/p99 latency, and each
proxy's own CPU time per request (user + system from /proc, so it holds on a busy machine), with
the activator's CPU as a ratio of the minimal proxy's. ``--profile DIR`` samples the activator
with py-spy during the measured runs and prints the functions it spends most time in. The
upstream is ``thaw emulator`` (default) or ``fixed``: a bare aiohttp server that answers in
``--upstream-ms`` with a canned completion (3 SSE events when streamed), which isolates the
proxies' cost from the emulator's own CPU use.

    .venv/bin/python bench/activator_overhead.py --upstream fixed --upstream-ms 20
    .venv/bin/python bench/activator_overhead.py --upstream fixed --concurrency 8 --pairs 3

Goals on a 2-core machine (issue 15): at 8 in flight the activator holds >= 0.9x of direct's
throughput, p50 +1.5 ms or less, p99 +10 ms or less; at every load its CPU per request is within
1.05x of the minimal proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import child, free_port, thaw_argv, wait_http_ok
from proxy_bench import nginx_conf, pct, serve_fixed

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
    """``n`` requests, ``concurrency`` at a time: each one's latency, and requests per second."""
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


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def family(pid: int) -> list[int]:
    """``pid`` and its children (nginx's master and workers)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(int(k) for k in kids)]


async def run(args: argparse.Namespace) -> None:
    up_port, act_port, min_port = free_port(), free_port(), free_port()
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
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory()
    with child(up_argv) as proc:
        wait_http_ok(f"http://127.0.0.1:{up_port}/health", 30, proc)
        direct = f"http://127.0.0.1:{up_port}"
        targets = {"direct": direct}
        cpu_pids: dict[str, list[int]] = {}
        try:
            for name, flag, port in (
                ("activator", "--serve-activator", act_port),
                ("minimal", "--serve-minimal", min_port),
            ):
                argv = [sys.executable, __file__, flag, str(port), direct]
                p = subprocess.Popen(argv, start_new_session=True)  # noqa: ASYNC220
                procs.append(p)
                wait_http_ok(f"http://127.0.0.1:{port}/health", 30, p)
                targets[name] = f"http://127.0.0.1:{port}"
                cpu_pids[name] = [p.pid]
            if shutil.which("nginx"):
                ng_port = free_port()
                conf = nginx_conf(ng_port, up_port, Path(tmp.name))
                ng = subprocess.Popen(["nginx", "-c", str(conf)])  # noqa: ASYNC220
                procs.append(ng)
                wait_http_ok(f"http://127.0.0.1:{ng_port}/health", 10)
                targets["nginx"] = f"http://127.0.0.1:{ng_port}"
                cpu_pids["nginx"] = family(ng.pid)
            else:
                print("nginx is not on PATH: its row is skipped (apt-get install nginx)")
            profiler = None
            if args.profile is not None:
                profiler = start_profile(cpu_pids["activator"][0], args.profile)
            for concurrency in args.concurrency:
                for stream in (False, True):
                    await measure(args, targets, cpu_pids, concurrency, stream)
            if profiler is not None:
                stop_profile(profiler, args.profile)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait()
            tmp.cleanup()


async def measure(
    args: argparse.Namespace,
    targets: dict[str, str],
    cpu_pids: dict[str, list[int]],
    concurrency: int,
    stream: bool,
) -> None:
    """One table: every path at ``concurrency`` in flight, runs alternated ``args.pairs`` times."""
    await load(targets["direct"], 200, concurrency, stream)  # warm-up
    for base in targets.values():
        await load(base, 100, concurrency, stream)
    lat: dict[str, list[float]] = {k: [] for k in targets}
    thr: dict[str, list[float]] = {k: [] for k in targets}
    cpu: dict[str, float] = dict.fromkeys(cpu_pids, 0.0)
    for _ in range(args.pairs):
        for name, base in targets.items():
            pids = cpu_pids.get(name, [])
            cpu0_s = cpu_s(pids)
            ls, t = await load(base, args.requests, concurrency, stream)
            if pids:
                cpu[name] += cpu_s(pids) - cpu0_s
            lat[name] += ls
            thr[name].append(t)
    d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
    dthr = statistics.median(thr["direct"])
    n = args.pairs * args.requests
    print(
        f"\n{'streamed' if stream else 'non-streamed'}: {concurrency} in flight, {args.upstream} "
        f"upstream {args.upstream_ms:g} ms, {args.pairs} alternated runs of {args.requests}"
    )
    print(
        f"  {'path':<10} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'+p50':>7} "
        f"{'p99 ms':>8} {'+p99':>7} {'CPU us/req':>11} {'vs minimal':>11}"
    )
    for name in targets:
        p50, p99 = pct(lat[name], 0.5), pct(lat[name], 0.99)
        t = statistics.median(thr[name])
        us = f"{cpu[name] / n * 1e6:11.0f}" if name in cpu else f"{'-':>11}"
        vs = (
            f"{cpu[name] / cpu['minimal']:11.2f}"
            if name in cpu and cpu.get("minimal")
            else f"{'-':>11}"
        )
        print(
            f"  {name:<10} {t:8.0f} {t / dthr:6.2f} {p50 * 1e3:8.1f} "
            f"{(p50 - d50) * 1e3:+7.1f} {p99 * 1e3:8.1f} {(p99 - d99) * 1e3:+7.1f} {us} {vs}"
        )


def start_profile(pid: int, out_dir: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (collapsed stacks) until :func:`stop_profile`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
    argv += ["--output", str(out_dir / "activator.folded")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    return proc


def stop_profile(proc: subprocess.Popen[bytes], out_dir: Path, top: int = 15) -> None:
    """Stop py-spy (it writes on SIGINT) and print the functions with the most samples: own
    (the frame on top) and total (anywhere on the stack)."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in (out_dir / "activator.folded").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    print(f"\nactivator profile ({total} samples at 200 Hz, {out_dir / 'activator.folded'}):")
    print(f"  {'own %':>6} {'total %':>8}  function")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:6.1f} {100 * inclusive[f] / total:8.1f}  {f}")


def _frame(raw: str) -> str:
    """``func (path/to/file.py:LINE)`` -> ``func (file.py)``: lines merged per function."""
    name, _, where = raw.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})" if where else name


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


def serve_minimal(port: int, upstream: str) -> None:
    """The minimal proxy: uvicorn + httptools + one aiohttp session on uvloop. It reads the
    body's ``model`` (the one field any router must read) and nothing else: no routing choice,
    no metrics, no timeouts, no buffer, no disconnect watch."""
    import json

    import aiohttp
    import uvicorn

    session: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        json.loads(body).get("model")
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        async with session[0].post(
            upstream + scope["path"], data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            ctype = resp.headers.get("Content-Type", "application/json").encode()
            if resp.content_type != "text/event-stream":
                data = await resp.read()
                headers = [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": data})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(b"content-type", ctype)],
                }
            )
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", lifespan="off",
        access_log=False, log_level="warning", server_header=False,
    )  # fmt: skip
    uvicorn.Server(config).run()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-activator":
        serve_activator(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-minimal":
        serve_minimal(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-fixed":
        serve_fixed(int(sys.argv[2]), float(sys.argv[3]))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", type=int, default=6, help="alternated runs per path (default 6)")
    p.add_argument("--requests", type=int, default=1000, help="requests per run (default 1000)")
    p.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[8, 64],
        help="requests in flight, one table each (default: 8 64)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample the activator with py-spy during the runs; collapsed stacks in DIR",
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
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
