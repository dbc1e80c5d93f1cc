"""Demand history: the pure counter arithmetic by table, then Debian's Prometheus scraping a real
``thaw emulator`` every second while requests go through it, read back through
prometheus-api-client as per-model numpy arrays."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from procs import child, free_port, thaw_argv, wait_http_ok
from prom import prometheus, wait_scraped

from knative.history import (
    BUFFERED,
    GENERATION_TOKENS,
    REQUESTS,
    RUNNING,
    HistoryError,
    PrometheusHistory,
    counter_increments,
    demand_from_samples,
    feed,
    step_grid,
)

NAN = math.nan


# -- the pure core ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "increments"),
    [
        ([5, 5, 7, 10], [0, 2, 3]),  # baseline at the first step is not counted
        ([5, 7, 2, 4], [2, 2, 2]),  # a drop is a reset: the new value counts
        ([NAN, NAN, 3, 4], [0, 3, 1]),  # appears mid-window: a new pod, from zero
        ([1, NAN, 4, 4], [0, 3, 0]),  # a missing step adds nothing; the next one catches up
        ([NAN, NAN, NAN], [0, 0]),
        ([3], []),
    ],
)
def test_counter_increments(samples: list[float], increments: list[float]) -> None:
    got = counter_increments(np.array(samples, dtype=np.float64))
    assert got.tolist() == increments


def test_demand_sums_pods_per_model_and_keeps_models_apart() -> None:
    start, step = 1000.0, 10.0
    results = {
        REQUESTS: [
            {"metric": {"model_name": "a", "pod": "1"}, "values": [[1000, "0"], [1010, "4"]]},
            {"metric": {"model_name": "a", "pod": "2"}, "values": [[1010, "2"], [1020, "3"]]},
            {"metric": {"model_name": "b"}, "values": [[1000, "1"], [1020, "6"]]},
        ],
        GENERATION_TOKENS: [
            {"metric": {"model_name": "a"}, "values": [[1000, "0"], [1010, "100"], [1020, "150"]]}
        ],
        RUNNING: [
            {"metric": {"model_name": "a", "pod": "1"}, "values": [[1010, "2"], [1020, "1"]]},
            {"metric": {"model_name": "a", "pod": "2"}, "values": [[1010, "3"]]},
        ],
        BUFFERED: [{"metric": {"model": "b"}, "values": [[1010, "7"], [1020, "0"]]}],
    }
    got = demand_from_samples(results, start, 1020.0, step)
    assert set(got) == {"a", "b"}
    a, b = got["a"], got["b"]
    assert a.timestamps_s.tolist() == [1010.0, 1020.0]
    assert a.requests.tolist() == [6.0, 1.0]  # pod 1: 4 then 0; pod 2: new (2), then 1
    assert a.arrivals_per_s.tolist() == [0.6, 0.1]
    assert a.generation_tokens_per_s.tolist() == [10.0, 5.0]
    assert a.tokens_per_s.tolist() == [10.0, 5.0]
    assert a.running.tolist() == [5.0, 1.0]
    assert b.requests.tolist() == [0.0, 5.0]  # missing at 1010; caught up at 1020
    assert b.buffered.tolist() == [7.0, 0.0]
    only = demand_from_samples(results, start, 1020.0, step, models=["b", "c"])
    assert list(only) == ["b", "c"]
    assert only["c"].requests.tolist() == [0.0, 0.0]


def test_feed_replays_counts_into_the_real_forecaster() -> None:
    from autoscaler.forecast import Forecaster

    counts = [0, 3, 5, 0, 2, 7, 1, 0]
    start, step = 1000.0, 10.0
    values = [[start + step * i, str(sum(counts[:i]))] for i in range(len(counts) + 1)]
    results = {REQUESTS: [{"metric": {"model_name": "m"}, "values": values}]}
    series = demand_from_samples(results, start, start + step * len(counts), step)["m"]
    assert series.requests.tolist() == counts
    fc = Forecaster(interval_s=step, min_history=2, method="ewma")
    fed = feed(series, fc.observe, offset_s=-start)
    assert fed == sum(counts)
    # The forecaster's clock starts at 0 where Prometheus' window started at 1000 s.
    assert fc.history(step * len(counts)).tolist() == series.requests.tolist()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 10.0, 0.0), r"step_s = 0.0, must be > 0"),
        ((10.0, 10.0, 1.0), r"end_s = 10.0, must be > start_s \(10.0\)"),
        ((0.0, 1e6, 1.0), r"must be <= 11000"),
    ],
)
def test_bad_windows_say_what_is_accepted(args: tuple[float, float, float], match: str) -> None:
    with pytest.raises(HistoryError, match=match):
        step_grid(*args)


def test_bad_url_and_unreachable_prometheus_are_history_errors() -> None:
    with pytest.raises(HistoryError, match="url = 'prom:9090'"):
        PrometheusHistory("prom:9090")
    dead = PrometheusHistory(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=0)
    with pytest.raises(HistoryError, match="failed"):
        dead.demand(time.time() - 60, time.time(), 5.0)


# -- against real Prometheus and a real emulator ----------------------------------------------


@pytest.mark.slow
def test_prometheus_scrapes_the_emulator_and_the_reader_gets_the_series(tmp_path: Path) -> None:
    port = free_port()
    argv = thaw_argv(
        "emulator", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
        "--load-time-s", "0",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    sent = 0
    tokens = 0
    with child(argv, log_path=tmp_path / "emulator.log") as proc:
        wait_http_ok(f"{base}/health", 30, proc)
        with prometheus(tmp_path, [f"127.0.0.1:{port}"], scrape_interval_s=1.0) as prom_url:
            wait_scraped(prom_url, "engines")
            start = time.time() - 2
            with httpx.Client(timeout=30) as client:
                for i in range(6):
                    body = {"model": "tiny", "prompt": "hello " * (i + 1), "max_tokens": 4}
                    r = client.post(f"{base}/v1/completions", json=body)
                    assert r.status_code == 200, r.text
                    sent += 1
                    tokens += r.json()["usage"]["completion_tokens"]
                    time.sleep(0.5)
            history = PrometheusHistory(prom_url)
            # Wait until a scrape after the last request is in, then read the window.
            deadline = time.monotonic() + 30
            while True:
                end = time.time()
                series = history.demand(start, end, 1.0)
                got = series.get("tiny")
                if got is not None and got.requests.sum() >= sent:
                    break
                assert time.monotonic() < deadline, f"Prometheus never saw {sent} requests"
                time.sleep(0.5)
    assert set(series) == {"tiny"}
    assert len(got) >= 3
    assert got.timestamps_s.dtype == np.float64
    assert np.all(np.diff(got.timestamps_s) == 1.0)
    assert got.requests.sum() == sent  # exact: counter differences, not extrapolated rates
    assert got.arrivals_per_s.max() > 0
    assert got.generation_tokens_per_s.sum() * got.step_s == tokens
    assert got.prompt_tokens_per_s.sum() > 0
    assert np.all(got.running >= 0) and np.all(got.waiting >= 0)
    assert got.buffered.sum() == 0  # no activator in this test
