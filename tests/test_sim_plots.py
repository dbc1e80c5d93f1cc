"""The report's plots: one colour per series in every panel, legends off the data, the fleet's
GPUs drawn, cold-start requests counted (replica starts beside them), unserved requests drawn
at infinity."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from test_sim_core import FLEET, thaw_config
from test_sim_warm_pool import WARM, config

from sim.fleet import parse_fleet
from sim.report import (
    SERIES,
    cold_start_figure,
    replicas_figure,
    summarize,
    ttft_figure,
)
from sim.runner import run_policies
from sim.traces import bursty, poisson, spread_zipf


def by_gid(ax: Any, gid: str) -> list[Any]:
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def test_replicas_plot_keeps_each_series_colour_draws_capacity_and_legend_off_the_data() -> None:
    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(bursty(2.0, 20.0, 200.0, 900.0, 4, 200, 16), 2, 1.0, 4)
    # thaw with a warm pool has sleepers, kpa has none: the old plot shifted colours then
    (thaw,) = run_policies(["thaw"], reqs, fleet, config(WARM, max_replicas=2), 0.0)
    (kpa,) = run_policies(["kpa"], reqs, fleet, config(max_replicas=2), 0.0)
    assert any(thaw.sample_sleeping) and not any(kpa.sample_sleeping)
    fig = replicas_figure([thaw, kpa], fleet)
    try:
        for ax in fig.axes:
            assert ax.get_legend() is None  # no legend over a panel's data
            for series, colour in SERIES.items():
                (line,) = by_gid(ax, series)
                assert matplotlib.colors.same_color(line.get_color(), colour), series
            (cap,) = by_gid(ax, "capacity")
            assert set(cap.get_ydata()) == {16}  # the fleet's GPUs
        assert fig.legends  # one legend, above the panels
        top = max(ax.get_position().y1 for ax in fig.axes)
        assert fig.legends[0].get_window_extent().y0 >= top * fig.bbox.height - 1
    finally:
        plt.close(fig)


def test_cold_start_plot_counts_requests_with_replica_starts_beside() -> None:
    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(bursty(2.0, 20.0, 200.0, 900.0, 4, 200, 16), 2, 1.0, 4)
    results = run_policies(["thaw", "always-on"], reqs, fleet, thaw_config(max_replicas=2), 0.0)
    summaries = {r.policy: summarize(r, fleet) for r in results}
    fig = cold_start_figure(results, summaries)
    try:
        requests_ax, starts_ax = fig.axes
        assert requests_ax.get_ylabel() == "requests"
        heights = [bar.get_height() for bar in requests_ax.patches]
        assert heights == [summaries["thaw"]["cold_start_requests"], 0]
        assert heights[0] > sum(results[0].cold_starts_by_tier.values())  # not the starts
        assert starts_ax.get_ylabel() == "replica starts"
    finally:
        plt.close(fig)


def test_unserved_requests_are_drawn_at_infinity() -> None:
    fleet = parse_fleet(FLEET)
    reqs = spread_zipf(poisson(4.0, 300.0, 3, 200, 16), 12, 0.0, 3)  # 12 models, 8 GPUs
    (res,) = run_policies(["always-on"], reqs, fleet, thaw_config(), 0.0)
    assert res.unserved_requests
    fig = ttft_figure([res])
    try:
        cdf = fig.axes[0]
        (marker,) = by_gid(cdf, "unserved")
        served = len(res.records) / (len(res.records) + res.unserved_requests)
        assert marker.get_ydata()[0] == served  # the curve stops there
        assert marker.get_xdata()[0] > max(r.ttft_s for r in res.records)
    finally:
        plt.close(fig)
