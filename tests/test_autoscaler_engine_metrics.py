"""The engine /metrics parser: vLLM V1 text, the legacy KV name, data-parallel engines, errors."""

from __future__ import annotations

import pytest

from engine.metrics import EngineMetrics, MetricsParseError, parse_engine_metrics

V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.5
# HELP vllm:engine_sleep_state Engine sleep state
# TYPE vllm:engine_sleep_state gauge
vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="awake"} 1.0
vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="weights_offloaded"} 0.0
vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="discard_all"} 0.0
"""


def test_v1_sums_counts_and_takes_the_fullest_kv() -> None:
    assert parse_engine_metrics(V1) == EngineMetrics(
        num_requests_waiting=4, num_requests_running=5, kv_cache_usage_ratio=0.5, sleeping=False
    )


def test_sleep_state_offloaded_reads_as_sleeping() -> None:
    text = V1.replace('sleep_state="awake"} 1.0', 'sleep_state="awake"} 0.0').replace(
        'sleep_state="weights_offloaded"} 0.0', 'sleep_state="weights_offloaded"} 1.0'
    )
    assert parse_engine_metrics(text).sleeping


def test_legacy_gpu_cache_usage_name() -> None:
    text = V1.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_engine_metrics(text).kv_cache_usage_ratio == 0.5


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("", "vllm:num_requests_waiting, vllm:num_requests_running, vllm:kv_cache_usage_perc"),
        ('vllm:num_requests_waiting{engine="0"} 1\n', "vllm:num_requests_running"),
    ],
)
def test_missing_metrics_are_named(text: str, missing: str) -> None:
    with pytest.raises(MetricsParseError, match=missing):
        parse_engine_metrics(text)


def test_garbage_is_refused() -> None:
    with pytest.raises(MetricsParseError):
        parse_engine_metrics("this is { not prometheus")


def test_only_the_families_read_are_parsed() -> None:
    """vLLM's exposition is mostly histograms the autoscaler never reads; they are skipped
    unparsed (a scrape is parsed on the event loop every tick), so even a line of another family
    that the parser would refuse does not cost the sample."""
    other = "\n".join(
        f'vllm:time_to_first_token_seconds_bucket{{le="{le}",model_name="tiny"}} 1.0'
        for le in (0.001, 0.01, 0.1, 1.0, "+Inf")
    )
    text = f"{other}\nvllm:some_new_family{{broken 1 2 3\n{V1}"
    assert parse_engine_metrics(text) == parse_engine_metrics(V1)
