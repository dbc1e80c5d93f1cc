"""The simulator's report: figures per policy (pure) and the files ``thaw sim`` writes (adapter).

:func:`summarize` turns a :class:`~sim.core.SimResult` into the ``report.json`` entry of one
policy: ``requests`` (measured arrivals), ``ttft_p50_s``, ``ttft_p99_s``, ``e2e_p99_s`` (over the
served ones), ``slo_attainment_ratio`` (TTFT within the SLO, over every arrival: a request
rejected or never served missed it), ``cold_start_requests`` (requests that waited on a replica
start or wake), ``cold_starts_by_tier``, ``gpu_hours_by_pool``, ``cost_usd``; and, to read them
by: ``served_requests``, ``rejected_requests`` / ``unserved_requests`` (never served), the TTFT of
cold-start requests, ``gpu_hours`` in all and ``busy_gpu_hours_floor`` (:func:`busy_gpu_hours`),
``capacity_refusals`` (starts refused for want of a free GPU). Floats are rounded so that the same
seed gives the same file, byte for byte. :func:`write_report` writes ``report.json`` and the PNG
plots (matplotlib, Agg backend): replicas over time against demand, the TTFT CDF per policy, cold
starts by tier, cost against SLO attainment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.core import SimResult
from sim.fleet import Fleet

_DIGITS = 6


def _r(x: float) -> float:
    return round(float(x), _DIGITS)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def busy_gpu_hours(result: SimResult) -> float:
    """GPU-hours of an oracle that holds one GPU per model exactly while the model has a request
    in the system (this run's own latencies, no cold start): a floor for any policy that runs a
    model on at least one whole GPU whenever it has work."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in result.records:
        spans.setdefault(r.model, []).append((r.arrival_s, r.arrival_s + r.e2e_s))
    total = 0.0
    for xs in spans.values():
        xs.sort()
        lo, hi = xs[0]
        for a, b in xs[1:]:
            if a > hi:
                total += hi - lo
                lo, hi = a, b
            elif b > hi:
                hi = b
        total += hi - lo
    return total / 3600.0


def summarize(result: SimResult, fleet: Fleet, slo_ttft_s: float) -> dict[str, Any]:
    """The ``report.json`` entry of one policy."""
    ttft = sorted(r.ttft_s for r in result.records)
    cold_ttft = sorted(r.ttft_s for r in result.records if r.cold_start)
    e2e = sorted(r.e2e_s for r in result.records)
    n = len(result.records)
    # Every measured arrival counts: a request rejected or never served missed its SLO.
    arrived = n + result.rejected_requests + result.unserved_requests
    within = sum(1 for t in ttft if t <= slo_ttft_s)
    hours = {p: _r(s / 3600.0) for p, s in sorted(result.gpu_seconds_by_pool.items())}
    cost = sum(
        result.gpu_seconds_by_pool[p.name] / 3600.0 * p.cost_per_hour_usd for p in fleet.pools
    )
    return {
        "requests": arrived,
        "served_requests": n,
        "rejected_requests": result.rejected_requests,
        "unserved_requests": result.unserved_requests,
        "ttft_p50_s": _r(percentile(ttft, 0.50)) if n else None,
        "ttft_p99_s": _r(percentile(ttft, 0.99)) if n else None,
        "e2e_p99_s": _r(percentile(e2e, 0.99)) if n else None,
        "slo_attainment_ratio": _r(within / arrived) if arrived else None,
        "cold_start_requests": len(cold_ttft),
        "cold_start_ttft_p50_s": _r(percentile(cold_ttft, 0.5)) if cold_ttft else None,
        "cold_start_ttft_max_s": _r(cold_ttft[-1]) if cold_ttft else None,
        "cold_starts_by_tier": dict(sorted(result.cold_starts_by_tier.items())),
        "gpu_hours_by_pool": hours,
        "gpu_hours": _r(sum(result.gpu_seconds_by_pool.values()) / 3600.0),
        "busy_gpu_hours_floor": _r(busy_gpu_hours(result)) if n else 0.0,
        "cost_usd": _r(cost),
        "capacity_refusals": result.capacity_refusals,
        "simulated_s": _r(result.end_s),
    }


def report_json(
    results: Sequence[SimResult], fleet: Fleet, slo_ttft_s: float, meta: Mapping[str, Any]
) -> str:
    """The whole ``report.json`` text: ``{"meta": ..., "policies": {name: entry}}``."""
    doc = {
        "meta": dict(meta),
        "policies": {r.policy: summarize(r, fleet, slo_ttft_s) for r in results},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# -- files ----------------------------------------------------------------------------------


def write_report(
    out_dir: Path,
    results: Sequence[SimResult],
    fleet: Fleet,
    slo_ttft_s: float,
    meta: Mapping[str, Any],
) -> list[Path]:
    """Write ``report.json`` and the plots into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.json"
    report.write_text(report_json(results, fleet, slo_ttft_s, meta), encoding="utf-8")
    return [report, *_plots(out_dir, results, fleet, slo_ttft_s)]


def _plots(
    out_dir: Path, results: Sequence[SimResult], fleet: Fleet, slo_ttft_s: float
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Software": None}
    paths: list[Path] = []

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.6 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        t = [x / 60.0 for x in res.sample_times_s]
        ax.step(t, res.sample_replicas, where="post", label="replicas holding a GPU")
        if any(res.sample_sleeping):
            ax.step(t, res.sample_sleeping, where="post", ls=":", label="replicas asleep (no GPU)")
        ax.plot(t, res.sample_demand, lw=0.6, alpha=0.7, label="demand (requests in system)")
        ax.set_title(res.policy)
        ax.set_ylabel("count")
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("time (min)")
    fig.tight_layout()
    p = out_dir / "replicas.png"
    fig.savefig(p, dpi=90, metadata=meta)
    plt.close(fig)
    paths.append(p)

    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        ttft = sorted(r.ttft_s for r in res.records)
        if ttft:
            n = len(ttft)
            ax.plot(ttft, [(k + 1) / n for k in range(n)], label=res.policy)
            # The tail: the share of requests slower than x (the last point, 0, is left out).
            tail.step(ttft[:-1], [(n - k - 1) / n for k in range(n - 1)], where="post")
    for a in (ax, tail):
        a.axvline(slo_ttft_s, color="grey", ls="--", lw=0.8, label=f"SLO {slo_ttft_s:g} s")
        a.set_xscale("log")
        a.set_xlabel("TTFT (s, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF per policy")
    ax.legend()
    tail.set_yscale("log")
    tail.set_ylabel("fraction of requests slower (log)")
    tail.set_title("TTFT tail: 1 - CDF")
    fig.tight_layout()
    p = out_dir / "ttft_cdf.png"
    fig.savefig(p, dpi=90, metadata=meta)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4))
    tiers = sorted({t for r in results for t in r.cold_starts_by_tier})
    width = 0.8 / max(len(results), 1)
    for k, res in enumerate(results):
        xs = [i + k * width for i in range(len(tiers))]
        ax.bar(xs, [res.cold_starts_by_tier.get(t, 0) for t in tiers], width, label=res.policy)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tiers))], tiers)
    ax.set_ylabel("replica cold starts")
    ax.set_title("Cold starts by tier")
    ax.legend()
    fig.tight_layout()
    p = out_dir / "cold_starts.png"
    fig.savefig(p, dpi=90, metadata=meta)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in results:
        s = summarize(res, fleet, slo_ttft_s)
        x, y = s["slo_attainment_ratio"] or 0.0, s["cost_usd"]
        ax.scatter([x], [y], s=60)
        ax.annotate(f" {res.policy}: {s['gpu_hours']:.2f} GPU-h", (x, y), fontsize=9)
    ax.set_xlabel(f"SLO attainment (TTFT <= {slo_ttft_s:g} s)")
    ax.set_ylabel("cost (USD)")
    ax.set_title("Cost vs SLO attainment")
    fig.tight_layout()
    p = out_dir / "cost_vs_slo.png"
    fig.savefig(p, dpi=90, metadata=meta)
    plt.close(fig)
    paths.append(p)
    return paths
