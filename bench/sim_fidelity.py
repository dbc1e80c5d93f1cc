"""Simulator fidelity: scale-from-zero TTFT measured on the local stack vs simulated.

1. Calibrate: :func:`thaw.sim_calibrate.measure` on the engine (``thaw emulator`` by default, real
   vLLM with ``--engine vllm``): cold start, prefill rate, decode step.
2. Measure: start ``thaw up`` (activator + the real decider + local actuator) with that engine,
   min 0 / max 1 replica and a short scale-to-zero grace, and replay a short bursty trace:
   ``--bursts`` bursts of ``--burst-size`` requests (``max_tokens: 1``, so the latency is the
   TTFT), ``--gap-s`` apart so that the model is back at zero before each burst.
3. Simulate: the same trace, the same policy file, a one-GPU fleet whose model has the calibrated
   figures (``engine_start_s`` = the measured cold start, weights that load in no time).

Prints each burst's first request (the one that waited a whole scale from zero), measured and
simulated, and the mean relative error of the simulated scale-from-zero TTFT; the goal is 20 % or
less. The baseline in the same run is the calibrated cold start alone.

  .venv/bin/python bench/sim_fidelity.py                   # the emulator, about a minute
  .venv/bin/python bench/sim_fidelity.py --engine vllm     # real vLLM CPU, several minutes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from engine.process import emulator_spec, vllm_spec
from policy_file.load import load_policy
from sim.core import simulate
from sim.fleet import parse_fleet
from sim.runner import sim_config
from sim.traces import Request
from thaw.sim_calibrate import measure

REPO = Path(__file__).resolve().parent.parent
MODEL = "fidelity"
PROMPT = "hello " * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_yaml(port: int, engine: str, model_dir: str | None, load_time_s: float) -> str:
    if engine == "emulator":
        eng = f"{{kind: emulator, emulator: {{load_time_s: {load_time_s}}}}}"
    else:
        eng = "{kind: vllm" + (f", model: {model_dir}" if model_dir else "") + "}"
    return f"""\
listen: {{host: 127.0.0.1, port: {port}}}
tick_s: 0.5
models:
  - name: {MODEL}
    engine: {eng}
    autoscaling: {{min_replicas: 0, max_replicas: 1, stable_window_s: 6,
                   scale_to_zero_grace_s: 2}}
    activator: {{buffer_size: 100, wait_timeout_s: 600}}
"""


async def replay(base: str, bursts: int, size: int, gap_s: float) -> list[tuple[float, float, int]]:
    """(arrival_s, ttft_s, prompt_tokens) of each request; arrivals from the first."""
    out: list[tuple[float, float, int]] = []
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as http:

        async def one(delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            start = time.monotonic()
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "ignore_eos": True}
            async with http.post(f"{base}/v1/completions", json=body) as r:
                data = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {data}")
            out.append((start - t0, time.monotonic() - start, int(data["usage"]["prompt_tokens"])))

        for b in range(bursts):
            await asyncio.gather(*(one(0.3 * k) for k in range(size)))
            if b < bursts - 1:
                await asyncio.sleep(gap_s)
    return sorted(out)


async def wait_up(base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("thaw up did not answer /health")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", choices=["emulator", "vllm"], default="emulator")
    ap.add_argument("--model", default=None, help="vllm: model dir (default: the tiny Llama)")
    ap.add_argument("--load-time-s", type=float, default=3.0, help="emulator's load time")
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--burst-size", type=int, default=4)
    ap.add_argument("--gap-s", type=float, default=25.0)
    args = ap.parse_args()

    # 1. Calibrate.
    port = free_port()
    if args.engine == "emulator":
        extra = [f"--load-time-s={args.load_time_s}"]
        spec = emulator_spec(port=port, served_model_name=MODEL, extra_args=extra)
        model_dir = None
    else:
        from thaw.cmd_engine import DEFAULT_MODEL_DIR

        model_dir = args.model or str(DEFAULT_MODEL_DIR.resolve())
        spec = vllm_spec(model_dir, port=port, served_model_name=MODEL)
    cal = asyncio.run(measure(spec, args.engine, MODEL, repeats=2))
    print(
        f"calibrated {args.engine}: cold start {cal.cold_start_s:.2f} s, decode step "
        f"{cal.decode_step_s * 1e3:.2f} ms, prefill {cal.prefill_tokens_per_s:,.0f} tokens/s"
    )

    # 2. Measure on the local stack.
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "policy.yaml"
        up_port = free_port()
        cfg_path.write_text(policy_yaml(up_port, args.engine, model_dir, args.load_time_s))
        log = open(Path(tmp) / "up.log", "wb")  # closed in the finally below
        argv = [sys.executable, "-m", "thaw.cli", "up", "--config", str(cfg_path)]
        argv += ["--work-dir", str(Path(tmp) / "w")]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{up_port}"
            asyncio.run(wait_up(base))
            measured = asyncio.run(replay(base, args.bursts, args.burst_size, args.gap_s))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        thaw = load_policy(cfg_path)

    # 3. Simulate the same trace.
    prefill = cal.prefill_tokens_per_s
    fleet = parse_fleet(
        f"""
pools:
  - {{name: local, gpu_type: this machine, gpu_memory_bytes: 1000000000, count: 1,
     cost_per_hour_usd: 0, host_ram_bytes: 1000000000, local_disk_bytes_per_s: 1.0e+15,
     s3_bytes_per_s: 1.0e+15, host_to_gpu_bytes_per_s: 1.0e+15}}
models:
  - name: {MODEL}
    weights_bytes: 1
    kv_bytes_per_token: 1
    pools: [local]
    engine_start_s: {cal.cold_start_s}
    perf: {{decode_base_s: {max(cal.decode_step_s, 1e-6)},
            prefill_tokens_per_s: {prefill if prefill != float("inf") else 1e9}}}
"""
    )
    reqs = tuple(Request(t, p, 1, MODEL) for t, _, p in measured)
    res = simulate(reqs, fleet, sim_config("thaw", reqs, fleet, thaw, 0.0))
    simulated = sorted((r.arrival_s, r.ttft_s) for r in res.records)

    # Scale-from-zero requests: the first of each burst.
    firsts = [k for k in range(len(measured)) if k % args.burst_size == 0]
    errors = []
    print(f"{'burst':>5s} {'measured TTFT':>14s} {'simulated':>10s} {'error':>7s}")
    for b, k in enumerate(firsts):
        m_ttft, s_ttft = measured[k][1], simulated[k][1]
        errors.append(abs(s_ttft - m_ttft) / m_ttft)
        print(f"{b:5d} {m_ttft:13.2f}s {s_ttft:9.2f}s {errors[-1]:7.1%}")
    mean_err = sum(errors) / len(errors)
    base_err = sum(abs(cal.cold_start_s - measured[k][1]) / measured[k][1] for k in firsts)
    print(
        f"scale-from-zero TTFT: simulated within {mean_err:.1%} of measured on average "
        f"(goal <= 20 %); the calibrated cold start alone: {base_err / len(firsts):.1%}; "
        f"simulated cold starts {sum(res.cold_starts_by_tier.values())} for {len(firsts)} bursts"
    )


if __name__ == "__main__":
    main()
