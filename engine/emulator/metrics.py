"""The emulator's Prometheus metrics, named and labelled as vLLM V1 exports them.

Owns one :class:`prometheus_client.CollectorRegistry` per app (never the global one): the
scheduler gauges (``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
``vllm:kv_cache_usage_perc``, ``vllm:engine_sleep_state``), the latency histograms (TTFT,
inter-token, end-to-end, with vLLM's default buckets) and the token and request counters. Every
series carries ``model_name`` and ``engine`` labels; gauges are set from an
:class:`~engine.emulator.engine.EngineState` at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.emulator.engine import EngineState, FinishReason
from kernel.vocab import (
    VLLM_E2E_REQUEST_LATENCY,
    VLLM_ENGINE_LABEL,
    VLLM_ENGINE_SLEEP_STATE,
    VLLM_FINISHED_REASON_LABEL,
    VLLM_GENERATION_TOKENS,
    VLLM_INTER_TOKEN_LATENCY,
    VLLM_KV_CACHE_USAGE,
    VLLM_MODEL_LABEL,
    VLLM_NUM_REQUESTS_RUNNING,
    VLLM_NUM_REQUESTS_WAITING,
    VLLM_PROMPT_TOKENS,
    VLLM_REQUEST_SUCCESS,
    VLLM_SLEEP_STATE_LABEL,
    VLLM_SLEEP_STATE_VALUES,
    VLLM_TIME_TO_FIRST_TOKEN,
)

# vLLM's default histogram buckets (vllm/v1/metrics/buckets.py).
TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

#: vLLM's finish reasons; each ``vllm:request_success`` series exists from the start.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
SLEEP_STATES = tuple(VLLM_SLEEP_STATE_VALUES.values())

LABELS = (VLLM_MODEL_LABEL, VLLM_ENGINE_LABEL)


class EmulatorMetrics:
    """The registry and its series; implements :class:`~engine.emulator.engine.EngineObserver`."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        lv = (model_name, engine)
        self._waiting = Gauge(
            VLLM_NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.", LABELS,
            registry=r,
        ).labels(*lv)  # fmt: skip
        self._running = Gauge(
            VLLM_NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.", LABELS,
            registry=r,
        ).labels(*lv)  # fmt: skip
        self._kv = Gauge(
            VLLM_KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.", LABELS,
            registry=r,
        ).labels(*lv)  # fmt: skip
        sleep = Gauge(
            VLLM_ENGINE_SLEEP_STATE,
            "Engine sleep state; awake = 1 means awake; weights_offloaded = 1 means sleep level "
            "1; discard_all = 1 means sleep level 2.",
            (*LABELS, VLLM_SLEEP_STATE_LABEL),
            registry=r,
        )
        self._sleep = {s: sleep.labels(*lv, s) for s in SLEEP_STATES}
        self._prompt = Counter(
            VLLM_PROMPT_TOKENS, "Number of prefill tokens processed.", LABELS, registry=r
        ).labels(*lv)
        self._generation = Counter(
            VLLM_GENERATION_TOKENS, "Number of generation tokens processed.", LABELS, registry=r
        ).labels(*lv)
        success = Counter(
            VLLM_REQUEST_SUCCESS,
            "Count of successfully processed requests.",
            (*LABELS, VLLM_FINISHED_REASON_LABEL),
            registry=r,
        )
        self._success = {reason: success.labels(*lv, reason) for reason in FINISH_REASONS}
        self._ttft = Histogram(
            VLLM_TIME_TO_FIRST_TOKEN, "Histogram of time to first token in seconds.",
            LABELS, buckets=TTFT_BUCKETS_S, registry=r,
        ).labels(*lv)  # fmt: skip
        self._itl = Histogram(
            VLLM_INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.",
            LABELS, buckets=ITL_BUCKETS_S, registry=r,
        ).labels(*lv)  # fmt: skip
        self._e2e = Histogram(
            VLLM_E2E_REQUEST_LATENCY, "Histogram of e2e request latency in seconds.",
            LABELS, buckets=E2E_BUCKETS_S, registry=r,
        ).labels(*lv)  # fmt: skip
        self.set_state(EngineState(0, 0, 0.0, 0))

    def prefilled(self, prompt_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)

    def token(self, first: bool, latency_s: float) -> None:
        self._generation.inc()
        (self._ttft if first else self._itl).observe(latency_s)

    def finished(self, reason: FinishReason, e2e_s: float) -> None:
        self._success[reason].inc()
        self._e2e.observe(e2e_s)

    def set_state(self, state: EngineState) -> None:
        self._waiting.set(state.num_waiting)
        self._running.set(state.num_running)
        self._kv.set(state.kv_usage_ratio)
        current = VLLM_SLEEP_STATE_VALUES[state.sleep_level]
        for name, gauge in self._sleep.items():
            gauge.set(1 if name == current else 0)

    def render(self, state: EngineState | None) -> bytes:
        """The exposition text, after setting the gauges from ``state`` when there is one."""
        if state is not None:
            self.set_state(state)
        return generate_latest(self.registry)
