"""Forecaster accuracy on held-back data: each method against the seasonal-naive baseline.

Series (arrivals per ``--interval-s``):

- ``azure total``: the shared Azure conversation trace (19,366 requests over 57 minutes), all
  requests; no season (57 minutes hold no day), so seasonal naive is the last interval;
- ``azure 20 models``: the same trace spread over 20 models (Zipf 1.0, seed 0), as the simulator
  runs it; the per-model losses are summed;
- ``diurnal``: a synthetic diurnal trace (sim.traces.diurnal: 2 req/s mean, amplitude 0.9, a
  "day" of 3600 s, 4 days), with ``season_s`` = the period;
- ``periodic``: scheduled bursts (sim.traces.bursty: 2 req/s for 60 s every 600 s, 4 hours), with
  ``season_s`` 600.

Held back: the last ``--held-back`` share of each series. Every forecast is rolling-origin: made
at an interval boundary from the intervals before it (the learned model refits on those only),
for the interval ``--horizon-s`` ahead (a cold start from local disk of an 8B model in the example
fleet); only forecasts whose target is in the held-back part are scored.

Printed per series and method: pinball loss at the policy's quantile (0.9) and its ratio to
seasonal naive's (< 1: better), coverage (share of intervals at or under the forecast; 0.9 is
calibrated), WAPE of the median forecast (the same method at quantile 0.5: sum |error| / sum
actual; MAPE is undefined on intervals with no arrival, which the tail models mostly have) and
its ratio to seasonal naive's, and the seconds the method took. The last lines say which method
wins on the pinball ratio, and what ``method: auto`` runs (autoscaler.forecast.AUTO_METHOD and
AUTO_METHOD_SEASONAL: the per-series winners below).

  .venv/bin/python bench/forecast_accuracy.py
  .venv/bin/python bench/forecast_accuracy.py --interval-s 30 --horizon-s 60
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoscaler.forecast import (
    AUTO_METHOD,
    AUTO_METHOD_SEASONAL,
    METHODS,
    Forecaster,
    Method,
    pinball_loss,
)
from sim.traces import Request, bursty, diurnal, load_trace, spread_zipf

REPO = Path(__file__).resolve().parent.parent
AZURE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def rolling(
    times: np.ndarray,
    method: Method,
    *,
    q: float,
    interval_s: float,
    season_s: float,
    horizon_s: float,
    end_s: float,
    held_from_s: float,
    min_history: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Online forecasts (made at each interval boundary) and actuals for held-back targets."""
    f = Forecaster(
        interval_s=interval_s,
        quantile=q,
        season_s=season_s,
        min_history=min_history,
        method=method,
    )
    f.observe(0.0, 0.0)  # the series starts at 0 even if the first arrival is later
    counts = np.bincount(
        (times // interval_s).astype(int), minlength=math.ceil(end_s / interval_s)
    ).astype(float)
    n_int = len(counts)
    preds: list[float] = []
    actual: list[float] = []
    j = 0
    for b in range(1, n_int):
        now = b * interval_s
        while j < len(times) and times[j] < now:
            f.observe(float(times[j]))
            j += 1
        target = math.floor((now + horizon_s) / interval_s)
        if target >= n_int or target * interval_s < held_from_s:
            continue
        fc = f.forecast(now, horizon_s)
        if fc is None:
            continue
        preds.append(fc.value)
        actual.append(counts[target])
    return np.asarray(preds), np.asarray(actual)


def series(reqs: Sequence[Request]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for r in reqs:
        out.setdefault(r.model, []).append(r.arrival_s)
    return {k: np.asarray(v) for k, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(AZURE), help="Azure-format trace CSV")
    ap.add_argument("--interval-s", type=float, default=10.0)
    ap.add_argument("--horizon-s", type=float, default=33.0)
    ap.add_argument("--quantile", type=float, default=0.9)
    ap.add_argument("--held-back", type=float, default=0.4, help="share of each series scored")
    ap.add_argument("--min-history", type=int, default=30)
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated; seasonal_naive always runs"
    )
    args = ap.parse_args()

    azure = load_trace(args.trace)
    day = 3600.0
    syn = diurnal(2.0, day, 0.9, 4 * day, seed=1)
    burst = bursty(2.0, 60.0, 540.0, 4 * 3600.0, seed=3)
    cases: list[tuple[str, list[np.ndarray], float, float]] = [
        ("azure total", [np.array([r.arrival_s for r in azure])], 0.0, azure[-1].arrival_s),
        (
            "azure 20 models",
            list(series(spread_zipf(azure, 20, 1.0, 0)).values()),
            0.0,
            azure[-1].arrival_s,
        ),
        ("diurnal", [np.array([r.arrival_s for r in syn])], day, 4 * day),
        ("periodic", [np.array([r.arrival_s for r in burst])], 600.0, 4 * 3600.0),
    ]
    print(
        f"interval {args.interval_s:g} s, horizon {args.horizon_s:g} s, quantile "
        f"{args.quantile:g}, last {args.held_back:.0%} held back, rolling origin"
    )
    head = ("series", "method", "pinball", "x s-naive", "cover", "WAPE q.5", "x s-naive", "s")
    print(f"{head[0]:16s} {head[1]:15s} {head[2]:>8s} {head[3]:>9s} {head[4]:>6s} "
          f"{head[5]:>8s} {head[6]:>9s} {head[7]:>6s}")  # fmt: skip
    chosen = [m for m in METHODS if m == "seasonal_naive" or m in args.methods.split(",")]
    wins: dict[str, list[float]] = {m: [] for m in chosen}
    jobs = len(cases) * len(chosen)
    bar = tqdm(total=jobs, desc="methods", leave=False)
    lines: list[str] = []
    for name, per_model, season_s, end_s in cases:
        held_from = end_s * (1 - args.held_back)
        base_loss = base_wape = math.nan
        for method in chosen:
            t0 = time.perf_counter()
            loss_sum = wape_abs = wape_act = 0.0
            covered = scored = 0
            for times in per_model:
                kw = {
                    "interval_s": args.interval_s,
                    "season_s": season_s,
                    "horizon_s": args.horizon_s,
                    "end_s": end_s,
                    "held_from_s": held_from,
                    "min_history": args.min_history,
                }
                p, a = rolling(times, method, q=args.quantile, **kw)
                loss_sum += pinball_loss(a, p, args.quantile) * len(a)
                covered += int(np.sum(a <= p))
                scored += len(a)
                p5, a5 = rolling(times, method, q=0.5, **kw)
                wape_abs += float(np.sum(np.abs(p5 - a5)))
                wape_act += float(np.sum(a5))
            loss = loss_sum / max(scored, 1)
            wape = wape_abs / max(wape_act, 1e-9)
            if method == "seasonal_naive":
                base_loss, base_wape = loss, wape
            ratio = loss / base_loss if base_loss > 0 else math.nan
            wins[method].append(ratio)
            lines.append(
                f"{name:16s} {method:15s} {loss:8.3f} {ratio:9.3f} {covered / max(scored, 1):6.2f} "
                f"{wape:8.3f} {wape / base_wape if base_wape > 0 else math.nan:9.3f} "
                f"{time.perf_counter() - t0:6.1f}"
            )
            bar.update(1)
    bar.close()
    print("\n".join(lines))
    mean_ratio = {m: float(np.exp(np.mean(np.log(v)))) for m, v in wins.items()}
    best = min(mean_ratio, key=lambda m: mean_ratio[m])
    print(
        "pinball ratio to seasonal naive, geometric mean over the series: "
        + ", ".join(f"{m} {r:.3f}" for m, r in mean_ratio.items())
    )
    print(
        f"best overall: {best}; method: auto runs {AUTO_METHOD_SEASONAL} with a season, "
        f"{AUTO_METHOD} without"
    )


if __name__ == "__main__":
    main()
