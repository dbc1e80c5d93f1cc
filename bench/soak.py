"""Soak: ``thaw up`` with emulator engines under varying load for five minutes; nothing lost.

One ``thaw up`` process serves one model on emulator replicas (0..3, a 2 s cold start). The
load, in phases of the run (``--duration-s``, 300 by default):

1. a burst of ``--burst`` requests at once at zero (streamed: each one's time to first token
   includes the cold start);
2. steady load, ``--concurrency`` clients, streamed and not; midway the policy file is rewritten
   (``max_replicas`` 3 -> 2, a larger buffer) and reloaded by the running stack;
3. steady non-streamed load while a ready replica is killed (SIGKILL): its requests are retried
   before their first byte, a replacement starts. (A stream already under way on a killed
   replica cannot be saved by any proxy; this phase sends none, and any stream cut elsewhere is
   reported);
4. quiet until the model is back at zero;
5. a second burst at zero, then a ramp of clients from 8 to 8x ``--concurrency`` (panic mode).

It prints requests answered (200 with a complete answer), refused with Retry-After (a client
would retry; none expected), lost (anything else: an error status, a cut connection, a stream
without its end; must be 0), time to first token p50/p99 (streamed requests, cold starts
included) and the ``thaw up`` process's RSS at start, after the first burst, and at the end, with
the end as a ratio of the after-burst baseline (flat: about 1.0). Exit status 1 if anything was
lost. ``--json FILE`` writes the figures.

    .venv/bin/python bench/soak.py                     # five minutes
    .venv/bin/python bench/soak.py --duration-s 60     # the shortened run tests/ uses
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import child, free_port, thaw_argv, wait_http_ok

MODEL = "soak"


def policy(port: int, max_replicas: int, buffer_size: int, grace_s: float) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.5
models:
  - name: {MODEL}
    engine:
      kind: emulator
      startup_timeout_s: 60
      emulator: {{load_time_s: 2.0, max_num_seqs: 16, decode_base_s: 0.01}}
    autoscaling:
      min_replicas: 0
      max_replicas: {max_replicas}
      target_concurrency_per_replica: 8
      stable_window_s: 6
      scale_to_zero_grace_s: {grace_s:g}
      metrics_stale_after_s: 5
    activator: {{buffer_size: {buffer_size}, wait_timeout_s: 120}}
"""


@dataclass
class Tally:
    answered: int = 0
    refused: int = 0
    lost: int = 0
    cut_streams: int = 0
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    lost_why: dict[str, int] = field(default_factory=dict)

    def lose(self, why: str) -> None:
        self.lost += 1
        self.lost_why[why] = self.lost_why.get(why, 0) + 1


async def one(session: aiohttp.ClientSession, base: str, tally: Tally, stream: bool) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a soak test"}],
        "max_tokens": random.randint(2, 12),
        "stream": stream,
    }
    t0 = time.perf_counter()
    try:
        async with session.post(f"{base}/v1/chat/completions", json=body) as r:
            if r.status != 200:
                await r.read()
                if r.status in (429, 503) and "Retry-After" in r.headers:
                    tally.refused += 1
                else:
                    tally.lose(f"status {r.status}")
                return
            if not stream:
                data = await r.json()
                if data["choices"][0]["message"]["role"] != "assistant":
                    tally.lose("bad answer")
                    return
            else:
                first = None
                done = False
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    if first is None:
                        first = time.perf_counter() - t0
                    if b'"error"' in line:
                        tally.cut_streams += 1
                        tally.lose("stream cut")
                        return
                    if line.strip() == b"data: [DONE]":
                        done = True
                if not done or first is None:
                    tally.lose("stream without its end")
                    return
                tally.ttft_s.append(first)
    except (aiohttp.ClientError, TimeoutError) as e:
        tally.lose(type(e).__name__)
        return
    tally.answered += 1
    tally.latency_s.append(time.perf_counter() - t0)


async def steady(
    session: aiohttp.ClientSession,
    base: str,
    tally: Tally,
    clients: int,
    until_s: float,
    stream_share: float,
) -> None:
    async def client() -> None:
        while time.monotonic() < until_s:
            await one(session, base, tally, random.random() < stream_share)

    await asyncio.gather(*(client() for _ in range(clients)))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def engine_pids() -> list[int]:
    """The emulator processes serving the soak model (not their supervisors)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if MODEL.encode() in cmd and b"emulator" in cmd and b"engine.supervisor" not in cmd:
                pids.append(int(entry.name))
    return pids


async def replicas(session: aiohttp.ClientSession, base: str, state: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("thaw_model_replicas{") and f'state="{state}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def run(
    args: argparse.Namespace, base: str, pid: int, cfg: Path, port: int
) -> dict[str, object]:
    d = args.duration_s
    start = time.monotonic()

    def at(fraction: float) -> float:
        return start + fraction * d

    tally = Tally()
    rss = {"start": rss_bytes(pid)}
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        say(f"burst of {args.burst} at zero")
        await asyncio.gather(*(one(session, base, tally, True) for _ in range(args.burst)))
        rss["after_burst"] = rss_bytes(pid)

        say(f"steady load, {args.concurrency} clients; a policy reload midway")

        async def reload() -> None:
            await asyncio.sleep(max(0.0, at(0.25) - time.monotonic()))
            await asyncio.to_thread(cfg.write_text, policy(port, 2, 20_000, args.grace_s))
            say("policy rewritten: max_replicas 3 -> 2, buffer_size 20000")

        await asyncio.gather(steady(session, base, tally, args.concurrency, at(0.4), 0.5), reload())

        say("steady non-streamed load; a ready replica killed")

        async def kill() -> None:
            await asyncio.sleep(max(0.0, at(0.45) - time.monotonic()))
            pids = engine_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                say(f"killed replica process {pids[0]} ({len(pids)} running)")

        await asyncio.gather(steady(session, base, tally, args.concurrency, at(0.55), 0.0), kill())

        say("quiet until the model is back at zero")
        await asyncio.sleep(max(0.0, at(0.75) - time.monotonic()))
        at_zero = await replicas(session, base, "ready") == 0

        say(f"second burst of {args.burst} at zero (at zero before it: {at_zero})")
        await asyncio.gather(*(one(session, base, tally, True) for _ in range(args.burst)))
        say("ramp: 8 to 8x clients")
        steps = 4
        for i in range(steps):
            clients = args.concurrency * (1 + 7 * i // (steps - 1))
            end = at(0.8 + 0.2 * (i + 1) / steps)
            await steady(session, base, tally, clients, end, 0.5)
    rss["end"] = rss_bytes(pid)
    ttft = sorted(tally.ttft_s)
    return {
        "duration_s": round(time.monotonic() - start, 1),
        "answered": tally.answered,
        "refused_with_retry_after": tally.refused,
        "lost": tally.lost,
        "lost_by_reason": tally.lost_why,
        "streams_cut": tally.cut_streams,
        "at_zero_before_second_burst": at_zero,
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p99_s": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 3) if ttft else None,
        "latency_p99_s": round(sorted(tally.latency_s)[int(0.99 * len(tally.latency_s))], 3)
        if tally.latency_s
        else None,
        "rss_bytes": rss,
        "rss_end_vs_after_burst": round(rss["end"] / rss["after_burst"], 3),
    }


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration-s", type=float, default=300.0, help="the whole run (default 300)")
    p.add_argument("--burst", type=int, default=1000, help="requests per burst (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="steady clients (default 16)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args()
    if args.duration_s < 60:
        p.error(f"--duration-s = {args.duration_s:g}, must be >= 60 (the model must reach zero)")
    args.grace_s = max(3.0, args.duration_s * 0.02)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8 * args.concurrency + 2 * args.burst + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "soak.yaml"
        cfg.write_text(policy(port, 3, 10_000, args.grace_s))
        log = Path(tmp) / "up.log"
        argv = thaw_argv("up", "--config", str(cfg), "--work-dir", str(Path(tmp) / "w"))
        with child(argv, log_path=log) as proc:
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base}/health", 30, proc)
            figures = asyncio.run(run(args, base, proc.pid, cfg, port))
        text = log.read_text()
        figures["policy_reloaded"] = "policy reloaded" in text
        figures["replica_exits_seen"] = text.count("exited unexpectedly")
    print(json.dumps(figures, indent=2))
    mib = {k: round(v / 2**20, 1) for k, v in figures["rss_bytes"].items()}
    print(
        f"\nanswered {figures['answered']}, lost {figures['lost']} (must be 0), refused "
        f"{figures['refused_with_retry_after']}; TTFT p50 {figures['ttft_p50_s']} s, p99 "
        f"{figures['ttft_p99_s']} s; thaw up RSS MiB start {mib['start']}, after the first "
        f"burst {mib['after_burst']}, end {mib['end']} ({figures['rss_end_vs_after_burst']}x)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
