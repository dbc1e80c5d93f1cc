"""``thaw sim calibrate``: measure one engine on this machine and write the figures a fleet uses.

An adapter (processes, HTTP, the clock): it starts one engine — ``thaw emulator`` or real vLLM
(the tiny Llama unless ``--model``) — through :class:`engine.process.EngineProcess`,
and measures, as medians over ``repeats``:

- cold start: process start to ``/health`` 200 (one sample: there is one start);
- TTFT of a short and of a long prompt on the idle engine (a ``max_tokens: 1`` completion), whose
  difference over the prompt-token difference (from the response's ``usage``) is the prefill rate;
- one decode step: (latency at ``max_tokens: 1 + N`` - latency at 1) / N;
- sleep at level 1 (``POST /sleep?level=1``) and wake (``POST /wake_up`` until ``/is_sleeping``
  says false).

:func:`fleet_fragment` turns them into a fleet-file ``models:`` entry (YAML text). The simulator's
own modules never import this one (they stay pure).
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.process import EngineProcess, EngineSpec
from kernel.clock import Clock, SystemClock
from kernel.errors import ThawError

SHORT_PROMPT = "Hello"
LONG_PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)
DECODE_TOKENS = 32


class CalibrationError(ThawError):
    """The engine did not start or answered something unexpected."""


@dataclass(frozen=True)
class Calibration:
    """What one engine measured on this machine (seconds, tokens)."""

    engine: str
    model: str
    cold_start_s: float
    ttft_short_s: float
    ttft_long_s: float
    short_prompt_tokens: int
    long_prompt_tokens: int
    decode_step_s: float
    sleep_level1_s: float | None
    wake_level1_s: float | None
    repeats: int

    @property
    def prefill_tokens_per_s(self) -> float:
        extra_tokens = self.long_prompt_tokens - self.short_prompt_tokens
        extra_s = self.ttft_long_s - self.ttft_short_s
        if extra_tokens <= 0 or extra_s <= 0:
            return float("inf")
        return extra_tokens / extra_s


async def _timed(clock: Clock, call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = clock.monotonic()
    out = await call()
    return clock.monotonic() - t0, out


async def measure(
    spec: EngineSpec,
    engine: str,
    served_model_name: str,
    repeats: int = 3,
    clock: Clock | None = None,
    stop_grace_s: float = 10.0,
) -> Calibration:
    """Start the engine of ``spec``, measure it (see the module doc), stop it."""
    import aiohttp

    clk = clock or SystemClock()
    proc = EngineProcess(spec)
    base = spec.base_url
    try:
        try:
            await proc.start()
        except Exception as e:  # EngineStartError, OSError: say what failed
            raise CalibrationError(f"the {engine} engine did not start: {e}") from e
        cold = proc.startup_s or 0.0
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def complete(prompt: str, max_tokens: int) -> dict[str, Any]:
                body = {
                    "model": served_model_name,
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "ignore_eos": True,
                }
                async with http.post(f"{base}/v1/completions", json=body) as resp:
                    data: dict[str, Any] = await resp.json()
                    if resp.status != 200:
                        raise CalibrationError(f"POST /v1/completions: {resp.status} {data}")
                    return data

            async def post(path: str) -> None:
                async with http.post(f"{base}{path}") as resp:
                    if resp.status != 200:
                        raise CalibrationError(f"POST {path}: {resp.status} {await resp.text()}")

            async def wake() -> None:
                await post("/wake_up")
                for _ in range(6000):
                    async with http.get(f"{base}/is_sleeping") as resp:
                        if not (await resp.json()).get("is_sleeping", False):
                            return
                raise CalibrationError("/is_sleeping still true after /wake_up")

            await complete(SHORT_PROMPT, 2)  # warm-up: first request paths, caches
            short: list[float] = []
            long: list[float] = []
            decode: list[float] = []
            tokens = (0, 0)
            for _ in range(repeats):
                s_short, d_short = await _timed(clk, lambda: complete(SHORT_PROMPT, 1))
                s_long, d_long = await _timed(clk, lambda: complete(LONG_PROMPT, 1))
                s_many, _ = await _timed(clk, lambda: complete(SHORT_PROMPT, 1 + DECODE_TOKENS))
                short.append(s_short)
                long.append(s_long)
                decode.append((s_many - s_short) / DECODE_TOKENS)
                tokens = (
                    int(d_short["usage"]["prompt_tokens"]),
                    int(d_long["usage"]["prompt_tokens"]),
                )
            sleeps: list[float] = []
            wakes: list[float] = []
            for _ in range(repeats):
                try:
                    s_sleep, _ = await _timed(clk, lambda: post("/sleep?level=1"))
                except CalibrationError:
                    break  # an engine without sleep mode (vLLM without VLLM_SERVER_DEV_MODE)
                s_wake, _ = await _timed(clk, wake)
                sleeps.append(s_sleep)
                wakes.append(s_wake)
    finally:
        await proc.stop(stop_grace_s)
    return Calibration(
        engine=engine,
        model=served_model_name,
        cold_start_s=cold,
        ttft_short_s=statistics.median(short),
        ttft_long_s=statistics.median(long),
        short_prompt_tokens=tokens[0],
        long_prompt_tokens=tokens[1],
        decode_step_s=max(statistics.median(decode), 0.0),
        sleep_level1_s=statistics.median(sleeps) if sleeps else None,
        wake_level1_s=statistics.median(wakes) if wakes else None,
        repeats=repeats,
    )


def _g(x: float) -> str:
    return f"{x:.4g}"


def fleet_fragment(cal: Calibration) -> str:
    """A fleet-file ``models:`` entry (YAML) with the measured figures, commented."""
    prefill = cal.prefill_tokens_per_s
    prefill_line = (
        f"      prefill_tokens_per_s: {_g(prefill)}"
        if prefill != float("inf")
        else "      # prefill_tokens_per_s: too fast to measure with these prompts"
    )
    wake = (
        f"  wake_overhead_s: {_g(cal.wake_level1_s)}        # POST /wake_up until awake"
        if cal.wake_level1_s is not None
        else "  # wake_overhead_s: the engine has no sleep mode here"
    )
    return f"""\
# Measured by `thaw sim calibrate` on this machine: {cal.engine}, model {cal.model}, medians of
# {cal.repeats}. Paste under `models:` in a fleet file; set weights_bytes, kv_bytes_per_token and
# pools yourself. engine_start_s is the whole cold start measured here (process start to /health
# 200, the weights load from this machine's disk included): the simulator adds
# weights / local_disk_bytes_per_s on top, so subtract that part or the load is counted twice.
# TTFT idle: {_g(cal.ttft_short_s)} s at {cal.short_prompt_tokens} prompt tokens, \
{_g(cal.ttft_long_s)} s at {cal.long_prompt_tokens}; sleep level 1: \
{_g(cal.sleep_level1_s) if cal.sleep_level1_s is not None else "n/a"} s.
- name: {cal.model}
  engine_start_s: {_g(cal.cold_start_s)}
{wake}
  perf:
{prefill_line}
      decode_base_s: {_g(cal.decode_step_s)}
"""
