"""The simulator's report: figures per policy (pure) and the files ``thaw sim`` writes (adapter).

:func:`summarize` turns a :class:`~sim.core.SimResult` into the ``report.json`` entry of one
policy. Every measured arrival is one of: met its SLO, served but missed it (``slo_missed``),
never served (``unserved_requests``: its model got no replica), or refused by the engine for
being longer than the model's context (``rejected_too_long``); ``slo_attainment_ratio`` is the
met ones over all of them. The SLO is sized per request (:class:`~sim.fleet.Slo`: a TTFT base
plus a budget per prompt token, optionally a time per output token), per model class, from the
fleet file; :class:`SloOverride` (``thaw sim --slo-*``) replaces parts of it for every class.

Latency percentiles (``ttft_p50_s``, ``ttft_p99_s``, ``e2e_p99_s``) are over every request that
reached an engine's queue or the activator (served and unserved): an unserved request's latency
is infinite, and a percentile that falls among them is ``null`` (the warning block says why);
``ttft_p99_served_s`` is over the served ones alone. Also: ``cold_start_requests`` (requests that
waited on a replica start or wake) and their TTFT, ``cold_starts_by_tier`` (replica starts),
``gpu_hours_by_pool`` / ``gpu_hours`` / ``cost_usd`` (billed over the measured window,
``window_s``, the same for every policy: an unshared pool's GPU while its replica exists, asleep
too; a shared pool's GPU while any engine is on it), ``models_served`` and ``models_per_gpu``
(:func:`models_per_gpu`: models served per GPU held on average), ``busy_gpu_hours_floor``
(:func:`busy_gpu_hours`),
``capacity_refusals`` (starts refused for want of a free GPU). Floats are rounded so that the
same seed gives the same file, byte for byte.

:func:`warnings` lists what a reader must not miss (unserved, refused, rejected requests);
``thaw sim`` prints it after every run. :func:`write_report` writes ``report.json`` and the PNG
plots (matplotlib, Agg backend): replicas awake and asleep and GPUs held over time against demand
and the fleet's GPUs, the
TTFT CDF per policy with unserved requests as an infinite tail, cold-start requests and replica
starts by tier, cost against SLO attainment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.core import SimResult
from sim.fleet import Fleet, Slo

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DIGITS = 6


def _r(x: float) -> float:
    return round(float(x), _DIGITS)


def _rq(x: float) -> float | None:
    """A rounded latency, None when infinite (an unserved request's)."""
    return None if math.isinf(x) else _r(x)


@dataclass(frozen=True)
class SloOverride:
    """Parts of the SLO to use for every model class instead of the fleet file's."""

    ttft_base_s: float | None = None
    ttft_per_prompt_token_s: float | None = None
    tpot_s: float | None = None

    def apply(self, slo: Slo) -> Slo:
        update = {k: v for k, v in vars(self).items() if v is not None}
        return slo.model_copy(update=update) if update else slo


def slos(result: SimResult, fleet: Fleet, override: SloOverride | None = None) -> dict[str, Slo]:
    """Per trace model, the SLO its requests are held to (its class's, then the override)."""
    over = override or SloOverride()
    return {t: over.apply(fleet.slo_of(c)) for t, c in sorted(result.model_classes.items())}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def busy_gpu_hours(result: SimResult) -> float:
    """GPU-hours of an oracle that holds one GPU per model exactly while one of its served
    requests is at an engine (from the engine taking it to its last token, this run's own
    latencies; time waiting at the activator for a replica is not counted), within the measured
    window GPU time is billed for: a floor under the GPU-hours of this run, since a request at
    an engine means a replica holding a GPU."""
    spans: dict[str, list[tuple[float, float]]] = {}
    end = result.window_s
    for r in result.records:
        start = r.arrival_s + r.wait_s
        if start < end:
            spans.setdefault(r.model, []).append((start, min(r.arrival_s + r.e2e_s, end)))
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


def models_per_gpu(result: SimResult) -> tuple[int, float | None]:
    """Models served (with a measured request served) and models served per GPU held on
    average over the billed window: models x window / GPU-seconds (None: no GPU held)."""
    served = len({r.model for r in result.records})
    held_s = sum(result.gpu_seconds_by_pool.values())
    if not held_s > 0 or not result.window_s > 0:
        return served, None
    return served, served * result.window_s / held_s


def ttft_cdf(result: SimResult) -> tuple[list[float], list[float], float]:
    """The TTFT CDF over every request that reached an engine or the activator: the served
    TTFTs (sorted) with the share of those requests at or below each, and the share never
    served (their TTFT is infinite: the curve stops that far below 1)."""
    xs = sorted(r.ttft_s for r in result.records)
    total = len(xs) + result.unserved_requests
    if not total:
        return [], [], 0.0
    ys = [(k + 1) / total for k in range(len(xs))]
    return xs, ys, result.unserved_requests / total


def slo_met(result: SimResult, targets: Mapping[str, Slo]) -> list[bool]:
    """Per served request (``result.records`` order), whether it met its SLO."""
    out = []
    for r in result.records:
        slo = targets[r.model]
        ok = r.ttft_s <= slo.ttft_target_s(r.prompt_tokens)
        if ok and slo.tpot_s is not None and r.output_tokens > 1:
            ok = (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) <= slo.tpot_s
        out.append(ok)
    return out


def summarize(
    result: SimResult, fleet: Fleet, override: SloOverride | None = None
) -> dict[str, Any]:
    """The ``report.json`` entry of one policy."""
    targets = slos(result, fleet, override)
    n = len(result.records)
    unserved = result.unserved_requests
    inf_tail = [math.inf] * unserved
    ttft = sorted(r.ttft_s for r in result.records)
    ttft_all = ttft + inf_tail
    cold_ttft = sorted(r.ttft_s for r in result.records if r.cold_start)
    e2e_all = sorted(r.e2e_s for r in result.records) + inf_tail
    # Every measured arrival counts: a request rejected or never served missed its SLO.
    arrived = n + result.rejected_requests + unserved
    met = sum(slo_met(result, targets))
    hours = {p: _r(s / 3600.0) for p, s in sorted(result.gpu_seconds_by_pool.items())}
    cost = sum(
        result.gpu_seconds_by_pool[p.name] / 3600.0 * p.cost_per_hour_usd for p in fleet.pools
    )
    admitted = n + unserved
    served_models, per_gpu = models_per_gpu(result)
    return {
        "requests": arrived,
        "served_requests": n,
        "slo_met_requests": met,
        "slo_missed_requests": n - met,
        "unserved_requests": unserved,
        "rejected_too_long": result.rejected_requests,
        "ttft_p50_s": _rq(percentile(ttft_all, 0.50)) if admitted else None,
        "ttft_p99_s": _rq(percentile(ttft_all, 0.99)) if admitted else None,
        "ttft_p99_served_s": _r(percentile(ttft, 0.99)) if n else None,
        "e2e_p99_s": _rq(percentile(e2e_all, 0.99)) if admitted else None,
        "slo_attainment_ratio": _r(met / arrived) if arrived else None,
        "cold_start_requests": len(cold_ttft),
        "cold_start_ttft_p50_s": _r(percentile(cold_ttft, 0.5)) if cold_ttft else None,
        "cold_start_ttft_max_s": _r(cold_ttft[-1]) if cold_ttft else None,
        "cold_starts_by_tier": dict(sorted(result.cold_starts_by_tier.items())),
        "gpu_hours_by_pool": hours,
        "gpu_hours": _r(sum(result.gpu_seconds_by_pool.values()) / 3600.0),
        "models_served": served_models,
        "models_per_gpu": _r(per_gpu) if per_gpu is not None else None,
        "busy_gpu_hours_floor": _r(busy_gpu_hours(result)) if n else 0.0,
        "cost_usd": _r(cost),
        "capacity_refusals": result.capacity_refusals,
        "window_s": _r(result.window_s),
        "simulated_s": _r(result.end_s),
    }


def slo_meta(
    results: Sequence[SimResult], fleet: Fleet, override: SloOverride | None = None
) -> dict[str, dict[str, float | None]]:
    """The SLO of each model class that ran, for the report's ``meta`` (the fleets of one
    plan differ only in their GPU counts: one fleet's SLOs are every one's)."""
    out: dict[str, dict[str, float | None]] = {}
    for res in results:
        for cls in sorted(set(res.model_classes.values())):
            slo = (override or SloOverride()).apply(fleet.slo_of(cls))
            out[cls] = slo.model_dump()
    return dict(sorted(out.items()))


def warnings(entries: Mapping[Any, Mapping[str, Any]]) -> list[str]:
    """What a reader must not miss, per policy: unserved, refused or rejected requests."""
    lines: list[str] = []
    for policy, s in entries.items():
        parts = []
        if s["unserved_requests"]:
            parts.append(
                f"{s['unserved_requests']:,} of {s['requests']:,} requests never served "
                "(their model got no GPU)"
            )
        if s["capacity_refusals"]:
            parts.append(f"{s['capacity_refusals']:,} replica starts refused for want of a GPU")
        if s["rejected_too_long"]:
            parts.append(
                f"{s['rejected_too_long']:,} requests rejected as longer than the model's "
                "context (perf.max_model_len_tokens in the fleet file)"
            )
        if parts:
            lines.append(f"{policy}: " + "; ".join(parts))
    if any(s["unserved_requests"] or s["capacity_refusals"] for s in entries.values()):
        lines.append(
            "the fleet is too small for this trace: size it with `thaw sim plan` (or --fleet a "
            "larger fleet file); unserved requests count as SLO misses with infinite TTFT"
        )
    return lines


Fleets = Fleet | Mapping[Any, Fleet]
"""One fleet for every policy, or each policy's own (the planner's found fleets)."""


def fleet_for(fleets: Fleets, policy: str) -> Fleet:
    return fleets if isinstance(fleets, Fleet) else fleets[policy]


def report_json(
    results: Sequence[SimResult],
    fleets: Fleets,
    override: SloOverride | None,
    meta: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The whole ``report.json`` text: ``{"meta": ..., "policies": {name: entry}}`` and the
    ``extra`` top-level keys (the planner's ``equal_slo`` table, which sorts first)."""
    first = fleet_for(fleets, results[0].policy) if results else None
    doc: dict[str, Any] = {
        **(extra or {}),
        "meta": {**meta, "slo": slo_meta(results, first, override) if first else {}},
        "policies": {
            r.policy: summarize(r, fleet_for(fleets, r.policy), override) for r in results
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


# -- files ----------------------------------------------------------------------------------

#: One colour per series, the same in every panel and plot.
SERIES = {
    "replicas": "tab:blue",
    "asleep": "tab:purple",
    "demand": "tab:orange",
    "capacity": "tab:red",
    "held": "tab:green",
}
POLICY_COLOURS = {
    "thaw": "tab:blue",
    "kpa": "tab:orange",
    "always-on": "tab:green",
    "predictive": "tab:purple",
}


def write_report(
    out_dir: Path,
    results: Sequence[SimResult],
    fleets: Fleets,
    override: SloOverride | None,
    meta: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``report.json`` and the plots into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.json"
    report.write_text(report_json(results, fleets, override, meta, extra), encoding="utf-8")
    return [report, *_plots(out_dir, results, fleets, override)]


def _plots(
    out_dir: Path, results: Sequence[SimResult], fleets: Fleets, override: SloOverride | None
) -> list[Path]:
    if not results:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {
        res.policy: summarize(res, fleet_for(fleets, res.policy), override) for res in results
    }
    figures = {
        "replicas.png": replicas_figure(results, fleets),
        "ttft_cdf.png": ttft_figure(results),
        "cold_starts.png": cold_start_figure(results, summaries),
        "cost_vs_slo.png": cost_figure(results, fleets, summaries),
    }
    paths = []
    for name, fig in figures.items():
        p = out_dir / name
        fig.savefig(p, dpi=90, metadata={"Software": None})
        plt.close(fig)
        paths.append(p)
    return paths


def _gpus(fleets: Fleets, results: Sequence[SimResult]) -> dict[str, int]:
    return {r.policy: sum(p.count for p in fleet_for(fleets, r.policy).pools) for r in results}


def replicas_figure(results: Sequence[SimResult], fleets: Fleets) -> Figure:
    """Replicas holding a GPU, asleep, and demand over time, one panel per policy, each series
    one colour in every panel (``gid`` names it), the fleet's GPUs drawn, the legend above the
    panels."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    gpus_of = _gpus(fleets, results)
    one_fleet = len(set(gpus_of.values())) == 1
    fig, axes = plt.subplots(
        len(results), 1, figsize=(10, 2.6 * len(results) + 0.6), squeeze=False, sharex=True
    )
    for ax, res in zip(axes[:, 0], results, strict=True):
        t = [x / 60.0 for x in res.sample_times_s]
        ax.step(
            t, res.sample_replicas, where="post", color=SERIES["replicas"], lw=1.0, gid="replicas"
        )
        ax.step(
            t,
            res.sample_sleeping,
            where="post",
            ls=":",
            color=SERIES["asleep"],
            lw=1.0,
            gid="asleep",
        )
        if res.sample_gpus_held:
            ax.step(
                t,
                res.sample_gpus_held,
                where="post",
                ls="-.",
                color=SERIES["held"],
                lw=0.9,
                gid="held",
            )
        ax.plot(t, res.sample_demand, lw=0.6, alpha=0.7, color=SERIES["demand"], gid="demand")
        ax.axhline(gpus_of[res.policy], color=SERIES["capacity"], ls="--", lw=0.8, gid="capacity")
        title = res.policy if one_fleet else f"{res.policy} ({gpus_of[res.policy]} GPUs)"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("count")
    axes[-1, 0].set_xlabel("time (min)")
    capacity = f"fleet GPUs ({next(iter(gpus_of.values()))})" if one_fleet else "fleet GPUs"
    handles = [
        Line2D([], [], color=SERIES["replicas"], label="replicas awake"),
        Line2D([], [], color=SERIES["asleep"], ls=":", label="replicas asleep"),
        Line2D([], [], color=SERIES["held"], ls="-.", label="GPUs held (billed)"),
        Line2D([], [], color=SERIES["demand"], label="demand (requests in system)"),
        Line2D([], [], color=SERIES["capacity"], ls="--", label=capacity),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.6 * len(results) + 0.6)))
    return fig


def ttft_figure(results: Sequence[SimResult]) -> Figure:
    """The TTFT CDF (served and unserved requests; the unserved drawn at infinity) and its
    tail, one colour per policy, the legend above the panels."""
    import matplotlib.pyplot as plt

    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.8))
    right = 1.0
    for res in results:
        right = max([right, *(r.ttft_s for r in res.records)])
    inf_x = right * 4  # where "infinite" is drawn: past every finite TTFT
    for res in results:
        colour = POLICY_COLOURS.get(res.policy)
        ttft, ys, _ = ttft_cdf(res)
        total = len(ttft) + res.unserved_requests
        if not total:
            continue
        label: str = res.policy
        if res.unserved_requests:
            label += f" ({res.unserved_requests:,} unserved: infinite TTFT)"
        ax.plot(ttft, ys, label=label, color=colour)
        if res.unserved_requests:  # the CDF stays below 1: the rest never got a first token
            top = ys[-1] if ys else 0.0
            ax.plot([ttft[-1] if ttft else right, inf_x], [top, top], ls=":", color=colour)
            ax.plot([inf_x], [top], marker=">", color=colour, gid="unserved")
        slower = [(total - k - 1) / total for k in range(len(ttft))]
        if res.unserved_requests:
            tail.step(
                [*ttft, inf_x], [*slower, slower[-1] if slower else 1.0], where="post", color=colour
            )
        elif len(ttft) > 1:
            tail.step(ttft[:-1], slower[:-1], where="post", color=colour)
    for a in (ax, tail):
        a.axvline(inf_x, color="grey", lw=0.6)
        a.text(inf_x, 0.02, " ∞", transform=a.get_xaxis_transform(), fontsize=9)
        a.set_xscale("log")
        a.set_xlabel("TTFT (s, log; ∞: never served)")
    ax.set_ylabel("fraction of requests (served and unserved)")
    ax.set_title("TTFT CDF per policy")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of requests slower (log)")
    tail.set_title("TTFT tail: 1 - CDF")
    fig.legend(
        loc="upper center",
        ncol=max(1, len(results)),
        fontsize=8,
        frameon=False,
        handles=ax.get_legend_handles_labels()[0],
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


def cold_start_figure(
    results: Sequence[SimResult], summaries: Mapping[Any, Mapping[str, Any]]
) -> Figure:
    """Cold-start requests per policy (what report.json leads with), replica starts by tier
    beside them."""
    import matplotlib.pyplot as plt

    fig, (req_ax, start_ax) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(1, 2))
    names = [res.policy for res in results]
    req_ax.bar(
        names,
        [summaries[n]["cold_start_requests"] for n in names],
        color=[POLICY_COLOURS.get(n, "grey") for n in names],
    )
    req_ax.set_ylabel("requests")
    req_ax.set_title("Cold-start requests (waited on a start or wake)", fontsize=9)
    tiers = sorted({t for r in results for t in r.cold_starts_by_tier})
    width = 0.8 / max(len(results), 1)
    for k, res in enumerate(results):
        xs = [i + k * width for i in range(len(tiers))]
        start_ax.bar(
            xs,
            [res.cold_starts_by_tier.get(t, 0) for t in tiers],
            width,
            label=res.policy,
            color=POLICY_COLOURS.get(res.policy),
        )
    start_ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tiers))], tiers)
    start_ax.set_ylabel("replica starts")
    start_ax.set_title("Replica starts by tier", fontsize=9)
    start_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def cost_figure(
    results: Sequence[SimResult], fleets: Fleets, summaries: Mapping[Any, Mapping[str, Any]]
) -> Figure:
    """Cost against SLO attainment per policy, the legend beside the axes."""
    import matplotlib.pyplot as plt

    one_fleet = len(set(_gpus(fleets, results).values())) == 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for res in results:
        s = summaries[res.policy]
        x, y = s["slo_attainment_ratio"] or 0.0, s["cost_usd"]
        ax.scatter(
            [x],
            [y],
            s=60,
            color=POLICY_COLOURS.get(res.policy),
            label=f"{res.policy}: {s['gpu_hours']:.2f} GPU-h"
            + (
                f", {s['models_per_gpu']:.2f} models/GPU"
                if s.get("models_per_gpu") is not None
                else ""
            ),
        )
    ax.set_xlabel("SLO attainment (TTFT within its size-aware target)")
    ax.set_ylabel("cost (USD)")
    ax.set_title(
        "Cost vs SLO attainment"
        + (" (one fleet: compare at equal SLO with `thaw sim plan`)" if one_fleet else "")
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
