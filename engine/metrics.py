"""Reading an engine's Prometheus ``/metrics`` text into the few numbers the autoscaler uses.

Pure: text in, :class:`EngineMetrics` out. Understands vLLM V1's names (:mod:`kernel.vocab`)
(``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``,
``vllm:engine_sleep_state``) and the older ``vllm:gpu_cache_usage_perc``; sums counts over
data-parallel engines (``engine`` label) and takes the highest KV usage among them, since the
fullest engine is the one that queues first.
The scraping itself (HTTP) lives in the local actuator and the Knative controller.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from kernel.vocab import (
    VLLM_ENGINE_SLEEP_STATE,
    VLLM_KV_CACHE_USAGE,
    VLLM_KV_CACHE_USAGE_LEGACY,
    VLLM_NUM_REQUESTS_RUNNING,
    VLLM_NUM_REQUESTS_WAITING,
    VLLM_SLEEP_STATE_LABEL,
    VLLM_SLEEP_STATE_VALUES,
)

_AWAKE = VLLM_SLEEP_STATE_VALUES[0]


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition, or lacks the metrics every vLLM engine exports."""


@dataclass(frozen=True)
class EngineMetrics:
    """One scrape of one replica."""

    num_requests_waiting: int
    num_requests_running: int
    kv_cache_usage_ratio: float
    sleeping: bool


#: The samples read, and so the only lines parsed (vLLM's exposition is mostly histograms).
_WANTED = (
    VLLM_NUM_REQUESTS_WAITING,
    VLLM_NUM_REQUESTS_RUNNING,
    VLLM_KV_CACHE_USAGE,
    VLLM_KV_CACHE_USAGE_LEGACY,
    VLLM_ENGINE_SLEEP_STATE,
)
_WANTED_PREFIXES = tuple(
    f"{prefix}{name}{end}"
    for name in _WANTED
    for prefix, end in (("", "{"), ("", " "), ("# HELP ", " "), ("# TYPE ", " "))
)


def _wanted_lines(text: str) -> str:
    """The lines of the wanted families only. A scrape is parsed on the event loop every tick,
    and vLLM's /metrics is hundreds of histogram lines the autoscaler never reads: parsing them
    all cost the local stack half its CPU under load on 2 cores."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_WANTED_PREFIXES))


def parse_engine_metrics(text: str) -> EngineMetrics:
    """Parse ``/metrics`` text; raise :class:`MetricsParseError` naming what is missing.

    Only the lines of the families read are parsed (the rest cannot change the answer)."""
    waiting = running = 0.0
    kv: float | None = None
    kv_legacy: float | None = None
    seen: set[str] = set()
    asleep = False
    try:
        families = list(text_string_to_metric_families(_wanted_lines(text)))
    except ValueError as e:
        raise MetricsParseError(f"not Prometheus text exposition: {e}") from e
    for family in families:
        for sample in family.samples:
            name = sample.name
            if name == VLLM_NUM_REQUESTS_WAITING:
                waiting += sample.value
            elif name == VLLM_NUM_REQUESTS_RUNNING:
                running += sample.value
            elif name == VLLM_KV_CACHE_USAGE:
                kv = max(kv or 0.0, sample.value)
            elif name == VLLM_KV_CACHE_USAGE_LEGACY:
                kv_legacy = max(kv_legacy or 0.0, sample.value)
            elif name == VLLM_ENGINE_SLEEP_STATE:
                if sample.labels.get(VLLM_SLEEP_STATE_LABEL) != _AWAKE and sample.value > 0:
                    asleep = True
            else:
                continue
            seen.add(name)
    missing = [n for n in (VLLM_NUM_REQUESTS_WAITING, VLLM_NUM_REQUESTS_RUNNING) if n not in seen]
    if kv is None and kv_legacy is None:
        missing.append(VLLM_KV_CACHE_USAGE)
    if missing:
        raise MetricsParseError(f"metrics missing from the scrape: {', '.join(missing)}")
    usage = kv if kv is not None else kv_legacy
    assert usage is not None
    return EngineMetrics(
        num_requests_waiting=int(waiting),
        num_requests_running=int(running),
        kv_cache_usage_ratio=min(max(usage, 0.0), 1.0),
        sleeping=asleep,
    )
