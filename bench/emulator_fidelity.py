"""How closely ``thaw emulator`` follows its engine model: measured TTFT and inter-token latency
against the model's prediction for the very same arrivals.

Starts the emulator as a child process, then
  1. idle: sequential streaming completions (one request at a time);
  2. load: a closed loop of ``--concurrency`` clients streaming completions for ``--duration-s``.
For every request it records when it was sent and when each token chunk arrived (client side).
The prediction replays the same send times through :class:`engine.perf_model.EngineCore` in
virtual time (no I/O, no clock), so it is the model's answer for exactly the load that was sent.
It prints, per scenario, the measured and predicted TTFT (median) and inter-token latency (mean),
and the ratio measured/predicted (goal: within 10 % idle). The emulator's own histograms
(``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``) are printed too;
they exclude the HTTP client's overhead.

  .venv/bin/python bench/emulator_fidelity.py
  .venv/bin/python bench/emulator_fidelity.py --concurrency 6 --prompt-tokens 800
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.perf_model import EngineCore, EnginePerf, Sequence

MODEL = "bench"


@dataclass
class Trace:
    """One request as the client saw it (seconds on the client's monotonic clock)."""

    sent_s: float
    prompt_tokens: int
    max_tokens: int
    token_s: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def predict(perf: EnginePerf, traces: list[Trace]) -> list[list[float]]:
    """Token times of each trace had the engine model run exactly, with the same send times."""
    t0 = min(t.sent_s for t in traces)
    order = sorted(range(len(traces)), key=lambda i: traces[i].sent_s)
    core = EngineCore(perf)
    out: list[list[float]] = [[] for _ in traces]
    now, nxt = 0.0, 0
    while nxt < len(order) or core.num_waiting or core.num_running:
        while nxt < len(order) and traces[order[nxt]].sent_s - t0 <= now:
            i = order[nxt]
            core.add(Sequence(str(i), traces[i].prompt_tokens, traces[i].max_tokens, now))
            nxt += 1
        plan = core.plan_step(now)
        if plan is None:
            now = traces[order[nxt]].sent_s - t0
            continue
        result = core.finish_step(plan)
        for seq in result.tokens:
            out[int(seq.request_id)].append(result.end_s + t0)
        now = result.end_s
    return out


def ttft_and_gaps(sent_s: float, token_s: list[float]) -> tuple[float, list[float]]:
    return token_s[0] - sent_s, [b - a for a, b in itertools.pairwise(token_s)]


async def one(client: httpx.AsyncClient, prompt: str, prompt_tokens: int, n: int) -> Trace:
    trace = Trace(time.monotonic(), prompt_tokens, n)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": n, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and '"choices":[]' not in line:
                trace.token_s.append(time.monotonic())
    if len(trace.token_s) != n:
        raise RuntimeError(f"expected {n} tokens, got {len(trace.token_s)}")
    return trace


async def idle(base: str, requests: int, prompt: str, p: int, n: int) -> list[Trace]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await one(client, prompt, p, 2)  # warm the connection and the server's code paths
        traces = []
        for _ in range(requests):
            traces.append(await one(client, prompt, p, n))
            await asyncio.sleep(0.05)  # let the engine go idle between requests
        return traces


async def load(
    base: str, concurrency: int, duration_s: float, prompt: str, p: int, n: int
) -> list[Trace]:
    traces: list[Trace] = []
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        end = time.monotonic() + duration_s

        async def loop() -> None:
            while time.monotonic() < end:
                traces.append(await one(client, prompt, p, n))

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return traces


def server_means(base: str) -> tuple[float, float]:
    """The emulator's own mean TTFT and inter-token latency from its histograms."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    ttft = "vllm:time_to_first_token_seconds"
    itl = "vllm:inter_token_latency_seconds"
    return (
        sums[f"{ttft}_sum"] / max(sums[f"{ttft}_count"], 1),
        sums[f"{itl}_sum"] / max(sums[f"{itl}_count"], 1),
    )


def report(name: str, perf: EnginePerf, traces: list[Trace]) -> list[float]:
    predicted = predict(perf, traces)
    m_ttft, p_ttft, m_gaps, p_gaps = [], [], [], []
    for trace, pred in zip(traces, predicted, strict=True):
        t, g = ttft_and_gaps(trace.sent_s, trace.token_s)
        pt, pg = ttft_and_gaps(trace.sent_s, pred)
        m_ttft.append(t)
        p_ttft.append(pt)
        m_gaps += g
        p_gaps += pg
    rows = [
        ("TTFT p50", statistics.median(m_ttft), statistics.median(p_ttft)),
        ("TTFT mean", statistics.fmean(m_ttft), statistics.fmean(p_ttft)),
        ("ITL mean", statistics.fmean(m_gaps), statistics.fmean(p_gaps)),
        ("ITL p50", statistics.median(m_gaps), statistics.median(p_gaps)),
    ]
    ratios = []
    for metric, measured, pred_v in rows:
        ratio = measured / pred_v
        ratios.append(ratio)
        print(
            f"{name:<14} {metric:<10} {measured * 1e3:>10.2f} ms {pred_v * 1e3:>10.2f} ms"
            f" {ratio:>7.3f}"
        )
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=15, help="idle requests (default: 15)")
    ap.add_argument("--concurrency", type=int, default=4, help="load clients (default: 4)")
    ap.add_argument("--duration-s", type=float, default=6.0, help="load duration (default: 6)")
    ap.add_argument("--prompt-tokens", type=int, default=400, help="(default: 400)")
    ap.add_argument("--max-tokens", type=int, default=16, help="per request (default: 16)")
    args = ap.parse_args()

    perf = EnginePerf.model_validate({"load_time_s": 0.0})
    p, n = args.prompt_tokens, args.max_tokens
    prompt = "x" * 4 * p  # the emulator counts four characters a token
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "thaw.cli", "--log-level", "WARNING", "emulator",
            "--port", str(port), "--served-model-name", MODEL, "--load-time-s", "0"]  # fmt: skip
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the emulator did not become healthy")
            time.sleep(0.05)
        print(
            f"engine model: prefill {perf.prefill_tokens_per_s:.0f} tok/s, decode step "
            f"{perf.decode_base_s * 1e3:.1f} ms + {perf.decode_per_seq_s * 1e3:.1f} ms/extra seq,"
            f" max_num_seqs {perf.max_num_seqs}; prompt {p} tokens, {n} output tokens"
        )
        print(f"{'scenario':<14} {'metric':<10} {'measured':>13} {'predicted':>13} {'ratio':>7}")
        idle_traces = asyncio.run(idle(base, args.requests, prompt, p, n))
        ratios = report("idle", perf, idle_traces)
        s_ttft, s_itl = server_means(base)
        print(
            f"{'idle (server)':<14} TTFT mean {s_ttft * 1e3:>10.2f} ms "
            f"{perf.idle_ttft_s(p) * 1e3:>10.2f} ms {s_ttft / perf.idle_ttft_s(p):>7.3f}"
        )
        print(
            f"{'idle (server)':<14} ITL mean  {s_itl * 1e3:>10.2f} ms "
            f"{perf.decode_step_s(1) * 1e3:>10.2f} ms {s_itl / perf.decode_step_s(1):>7.3f}"
        )
        load_traces = asyncio.run(load(base, args.concurrency, args.duration_s, prompt, p, n))
        report(f"load c={args.concurrency}", perf, load_traces)
        print(f"load: {len(load_traces)} requests in {args.duration_s:.0f} s")
        worst = max(abs(r - 1) for r in ratios)
        verdict = "within" if worst <= 0.10 else "NOT within"
        print(f"idle: worst |ratio - 1| = {worst:.3f}, {verdict} the 10 % goal")
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
