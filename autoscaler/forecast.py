"""Demand forecasting one cold start ahead. Pure: time and data come in as arguments; no I/O.

Owns :class:`Forecaster` (one model's arrivals per interval, online: :meth:`Forecaster.observe`
each arrival, :meth:`Forecaster.forecast` the demand of the interval that holds
``now + horizon_s`` at a quantile) and :class:`ReplicaForecaster` (the decider's signal: the
forecast demand as replicas, through Little's law, or None when the forecast is not trusted).

Demand is *arrivals per interval* (``interval_s``): it does not depend on how the autoscaler
served the past, unlike queue depth or concurrency. The intervals before ``floor(now /
interval_s)`` are complete; the forecast is for the interval that holds ``now + horizon_s``, ``k``
intervals after the last complete one.

Methods (all give the value at the policy's quantile ``q``):

- ``seasonal_naive``: the value one season (``season_s``) before the target interval (with less
  than a season of history, or ``season_s`` 0: the last complete interval — plain naive), plus the
  ``q``-quantile of that rule's past errors. The baseline every other method is measured against.
- ``ewma``: an exponentially weighted mean of the past intervals (``alpha`` 0.3) plus the
  ``q``-quantile of its past ``k``-step errors.
- ``ridge``: ridge regression over lag features (the last 12 intervals, their mean, the value a
  season before the target and the target's phase in the season when ``season_s`` is set) plus
  the ``q``-quantile of its recent errors; refit every 30 intervals on at most the last 2000.
- ``gbr``: scikit-learn's gradient boosting with the quantile loss at ``q`` over the same
  features, refit likewise (about 20x ridge's cost).
- ``auto``: what ``bench/forecast_accuracy.py`` found best on held-back data: ``ridge`` when the
  policy sets a season and a season of history is in (:data:`AUTO_METHOD_SEASONAL`), ``ewma``
  otherwise (:data:`AUTO_METHOD`).

Confidence (0..1) gates the forecast: ``1 - L / L0`` over the last 30 forecasts whose target has
passed (the last season's worth when ``season_s`` is set: over a quiet stretch alone, "nothing
comes" is perfect and any forecast of the next burst scores 0), where ``L`` is their pinball loss
at ``q`` and ``L0`` that of forecasting zero. A forecast no better than saying nothing comes has
confidence 0. With fewer than :data:`MIN_SCORED` scored forecasts, or less than ``min_history``
intervals, there is no forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import Ridge

from autoscaler.policy import ForecastConfig

Method = Literal["seasonal_naive", "ewma", "ridge", "gbr"]
METHODS: tuple[Method, ...] = ("seasonal_naive", "ewma", "ridge", "gbr")
#: What ``method: auto`` runs, by whether the policy sets a season: the winners of
#: bench/forecast_accuracy.py on held-back data (pinball loss at q 0.9 over seasonal naive's).
#: No season (Azure trace, total and 20 models): ewma 0.84 / 0.86, ridge 0.86 / 0.87, gbr
#: 0.93 / 0.87. With a season: diurnal gbr 0.68, ridge 0.75, ewma 0.84; scheduled bursts
#: seasonal naive 1.00, ridge 1.17, gbr 4.04, ewma 8.15. Ridge is the one that never fails
#: badly with a season (geometric mean 0.90 over the four series), at 1/20 of gbr's cost.
AUTO_METHOD: Method = "ewma"
AUTO_METHOD_SEASONAL: Method = "ridge"
#: Scored forecasts needed before any confidence is given.
MIN_SCORED = 5
#: Forecasts scored for the confidence.
ACCURACY_WINDOW = 30
#: A forecast of fewer arrivals per interval than this asks for no replica.
MIN_ARRIVALS = 0.5

_EWMA_ALPHA = 0.3
_RESIDUAL_WINDOW = 240
_GBR_LAGS = 12
_GBR_REFIT_EVERY = 30
_GBR_MAX_ROWS = 2000


@dataclass(frozen=True)
class Forecast:
    """Demand expected in the interval ``[target_start_s, target_start_s + interval_s)``."""

    value: float
    """Arrivals in that interval, at ``quantile``."""
    quantile: float
    confidence: float
    """0..1: 1 - recent pinball loss / that of forecasting zero (see the module docstring)."""
    method: Method
    target_start_s: float
    interval_s: float

    @property
    def rate_per_s(self) -> float:
        """The forecast as arrivals per second."""
        return self.value / self.interval_s


def pinball_loss(actual: np.ndarray, forecast: np.ndarray, q: float) -> float:
    """Mean pinball (quantile) loss of ``forecast`` at quantile ``q``."""
    diff = actual - forecast
    if not diff.size:
        return 0.0
    # np.mean's own sum and division (the same float), without the cost of its wrapper
    total = float(np.add.reduce(np.maximum(q * diff, (q - 1.0) * diff), axis=None))
    return total / int(diff.size)


class _ScoredWindow:
    """The last ``maxlen`` scored forecasts and their actual values, as two numpy arrays read
    without copying (appended one by one, read at each new confidence)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._f = np.empty(0)
        self._a = np.empty(0)
        self._lo = self._hi = 0

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, forecast: float, actual: float) -> None:
        if self._hi == len(self._f):  # full: move the live part to the front of a new buffer
            n = self._hi - self._lo
            size = max(64, 2 * (n + 1))
            f, a = np.empty(size), np.empty(size)
            f[:n] = self._f[self._lo : self._hi]
            a[:n] = self._a[self._lo : self._hi]
            self._f, self._a, self._lo, self._hi = f, a, 0, n
        self._f[self._hi] = forecast
        self._a[self._hi] = actual
        self._hi += 1
        if self._hi - self._lo > self.maxlen:
            self._lo += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(forecasts, actual values), oldest first."""
        return self._f[self._lo : self._hi], self._a[self._lo : self._hi]


def _resolve(method: str, seasonal: bool) -> Method:
    if method == "auto":
        return AUTO_METHOD_SEASONAL if seasonal else AUTO_METHOD
    if method not in METHODS:
        raise ValueError(f"method = {method!r}, must be one of auto, {', '.join(METHODS)}")
    return method


class Forecaster:
    """One model's demand history and its forecasts; online, deterministic, no I/O."""

    def __init__(
        self,
        *,
        interval_s: float = 10.0,
        quantile: float = 0.9,
        season_s: float = 0.0,
        min_history: int = 30,
        method: str = "auto",
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s = {interval_s}, must be > 0")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile = {quantile}, must be in (0, 1)")
        if season_s < 0:
            raise ValueError(f"season_s = {season_s}, must be >= 0")
        if min_history < 2:
            raise ValueError(f"min_history = {min_history}, must be >= 2 intervals")
        self.interval_s = float(interval_s)
        self.quantile = float(quantile)
        self.season = round(season_s / interval_s)
        self.min_history = min_history
        self.method: Method = _resolve(method, self.season >= 1)
        self.auto = method == "auto"
        self._first: int | None = None
        self._y: list[float] = []
        self._done = 0  # complete intervals whose forecasts are scored
        self._conf: float | None = None
        self._conf_stale = False
        # a whole season when there is one: a quiet stretch alone would make any forecast of
        # the coming burst look worse than "nothing comes"
        self._scored = _ScoredWindow(max(ACCURACY_WINDOW, self.season))
        self._pending: dict[int, float] = {}  # target interval -> forecast value
        self._cache: tuple[int, int, Forecast] | None = None
        # (method, steps ahead) -> (model, quantile offset, intervals seen when fitted)
        self._fits: dict[tuple[str, int], tuple[GradientBoostingRegressor | Ridge, float, int]] = {}
        self._levels = _EwmaLevels()
        #: Intervals kept: what the learned methods and the residual quantiles look back over.
        self.keep = _GBR_MAX_ROWS + _GBR_LAGS + 2 * self.season + _RESIDUAL_WINDOW + 64

    @classmethod
    def from_config(cls, cfg: ForecastConfig) -> Forecaster:
        """A forecaster as the policy file's ``forecast`` block sets it."""
        return cls(
            interval_s=cfg.interval_s,
            quantile=cfg.quantile,
            season_s=cfg.season_s,
            min_history=cfg.min_history,
            method=cfg.method,
        )

    # -- data --------------------------------------------------------------------------------

    def observe(self, t_s: float, value: float = 1.0) -> None:
        """Count ``value`` arrivals at ``t_s``. Arrivals before the first one seen are dropped."""
        k = math.floor(t_s / self.interval_s)
        if self._first is None:
            self._first = k
        i = k - self._first
        if i < 0:
            return
        while len(self._y) <= i:
            self._y.append(0.0)
        self._y[i] += value

    def history(self, now_s: float) -> np.ndarray:
        """The complete intervals before ``now_s`` (zeros where nothing arrived)."""
        n = self._complete(now_s)
        return np.asarray(self._y[:n], dtype=float)

    def _complete(self, now_s: float) -> int:
        """Complete intervals at ``now_s``; extends the series with zeros, scores forecasts."""
        if self._first is None:
            return 0
        n = max(0, math.floor(now_s / self.interval_s) - self._first)
        while len(self._y) < n:
            self._y.append(0.0)
        while self._done < n:
            f = self._pending.pop(self._done, None)
            if f is not None:
                self._scored.append(f, self._y[self._done])
                self._conf_stale = True
            self._done += 1
        if n > 2 * self.keep:  # forget the oldest intervals (bounded memory and work)
            drop = n - self.keep
            del self._y[:drop]
            self._first += drop
            self._done -= drop
            self._pending = {i - drop: v for i, v in self._pending.items() if i >= drop}
            self._fits.clear()
            self._cache = None
            n -= drop
        return n

    # -- forecasts -------------------------------------------------------------------------

    def confidence(self) -> float | None:
        """1 - pinball loss / zero-forecast loss over the recent scored forecasts; None: too few."""
        if not self._conf_stale:
            return self._conf
        self._conf_stale = False
        self._conf = self._score()
        return self._conf

    def _score(self) -> float | None:
        if len(self._scored) < MIN_SCORED:
            return None
        f, a = self._scored.arrays()
        loss = pinball_loss(a, f, self.quantile)
        zero = pinball_loss(a, np.zeros_like(a), self.quantile)
        if zero <= 0:
            return 1.0 if loss <= 1e-12 else 0.0
        return float(min(1.0, max(0.0, 1.0 - loss / zero)))

    def forecast(self, now_s: float, horizon_s: float) -> Forecast | None:
        """Demand of the interval holding ``now_s + horizon_s``; None with too little history.

        The forecast is recorded and scored once its interval is complete (the confidence);
        calling it again within the same interval and horizon returns the same value.
        """
        if horizon_s < 0:
            raise ValueError(f"horizon_s = {horizon_s}, must be >= 0")
        n = self._complete(now_s)
        if n < self.min_history:
            return None
        assert self._first is not None
        target = math.floor((now_s + horizon_s) / self.interval_s) - self._first
        k = max(1, target - (n - 1))
        if self._cache is not None and self._cache[:2] == (n, k):
            cached = self._cache[2]
            return Forecast(
                cached.value,
                cached.quantile,
                self.confidence() or 0.0,
                cached.method,
                cached.target_start_s,
                cached.interval_s,
            )
        if self.method_for(n) == "ewma":  # from the series' tail: no array of all of it
            lo = max(0, n - _ewma_window(k))
            value = self._ewma(self._y[lo:n], k, self._first + lo)
        else:
            value = self.predict(np.asarray(self._y[:n], dtype=float), k)
        self._pending.setdefault(n - 1 + k, value)
        conf = self.confidence()
        fc = Forecast(
            value=value,
            quantile=self.quantile,
            confidence=conf if conf is not None else 0.0,
            method=self.method_for(n),
            target_start_s=(self._first + n - 1 + k) * self.interval_s,
            interval_s=self.interval_s,
        )
        self._cache = (n, k, fc)
        return fc

    def method_for(self, n: int) -> Method:
        """The method used with ``n`` intervals of history: ``auto`` runs :data:`AUTO_METHOD`
        until a season (plus the lags) is seen, then :data:`AUTO_METHOD_SEASONAL`."""
        if self.auto and self.method == AUTO_METHOD_SEASONAL and n < self.season + _GBR_LAGS:
            return AUTO_METHOD
        return self.method

    def predict(self, y: np.ndarray, k: int) -> float:
        """The ``q``-quantile of ``y[len(y) - 1 + k]`` given ``y`` (pure in ``y`` and ``k``)."""
        method = self.method_for(len(y))
        if method == "seasonal_naive":
            return self._seasonal_naive(y, k)
        if method == "ewma":
            tail = y[-_ewma_window(k) :]
            return self._ewma(tail.tolist(), k, (self._first or 0) + len(y) - len(tail))
        return self._learned(y, k, method)

    def _seasonal_source(self, t: np.ndarray, k: int) -> np.ndarray:
        """Index of the value the seasonal-naive rule uses for target ``t`` (origin ``t - k``)."""
        s = self.season
        if s >= 1:
            src = t - s * math.ceil(k / s)
            return np.where(src >= 0, src, t - k)
        return t - k

    def _seasonal_naive(self, y: np.ndarray, k: int) -> float:
        n = len(y)
        point = float(y[int(self._seasonal_source(np.array([n - 1 + k]), k)[0])]) if n else 0.0
        t = np.arange(max(k, n - _RESIDUAL_WINDOW), n)
        if len(t) == 0:
            return max(0.0, point)
        resid = y[t] - y[self._seasonal_source(t, k)]
        return max(0.0, point + quantile(resid, self.quantile))

    def _ewma(self, tail: list[float], k: int, start: int) -> float:
        """ewma over ``tail``, the last :func:`_ewma_window` values of the series (or all of
        it), whose first value is the series' interval ``start``."""
        n = len(tail)
        level = self._levels.of(tail, start)
        point = level[-1]
        lo = max(k, n - _RESIDUAL_WINDOW)
        if lo >= n:
            return max(0.0, point)
        resid = [tail[t] - level[t - k] for t in range(lo, n)]
        return max(0.0, point + quantile(resid, self.quantile))

    def _features(self, y: np.ndarray, origins: np.ndarray, k: int) -> np.ndarray:
        cols = [y[origins - j] for j in range(_GBR_LAGS)]
        lags = np.stack(cols, axis=1)
        feats = [lags, lags.mean(axis=1, keepdims=True)]
        if self.season >= 1:
            target = origins + k
            src = self._seasonal_source(target, k)
            feats.append(y[src][:, None])
            phase = 2 * np.pi * (target % self.season) / self.season
            feats.append(np.sin(phase)[:, None])
            feats.append(np.cos(phase)[:, None])
        return np.concatenate(feats, axis=1)

    def _learned(self, y: np.ndarray, k: int, method: Method) -> float:
        """ridge or gbr: one model per steps-ahead ``k``, refit every 30 intervals."""
        n = len(y)
        first = _GBR_LAGS - 1
        origins = np.arange(max(first, n - k - _GBR_MAX_ROWS), n - k)
        if len(origins) < 20:  # too little to learn from: fall back to the baseline
            return self._seasonal_naive(y, k)
        fit = self._fits.get((method, k))
        if fit is None or n - fit[2] >= _GBR_REFIT_EVERY:
            x = self._features(y, origins, k)
            target = y[origins + k]
            model: GradientBoostingRegressor | Ridge
            if method == "gbr":
                model = GradientBoostingRegressor(
                    loss="quantile",
                    alpha=self.quantile,
                    n_estimators=60,
                    max_depth=3,
                    learning_rate=0.1,
                    random_state=0,
                )
                model.fit(x, target)
                offset = 0.0  # the quantile loss learns the quantile itself
            else:
                model = Ridge(alpha=1.0)
                model.fit(x, target)
                recent = slice(-_RESIDUAL_WINDOW, None)
                resid = target[recent] - model.predict(x[recent])
                offset = quantile(resid, self.quantile)
            fit = (model, offset, n)
            self._fits[(method, k)] = fit
        x_now = self._features(y, np.array([n - 1]), k)
        model = fit[0]
        if isinstance(model, Ridge):
            # Ridge.predict's own arithmetic (X @ coef_ + intercept_), without its input checks,
            # which cost several times the product on one row
            return max(0.0, float((x_now @ model.coef_ + model.intercept_)[0]) + fit[1])
        return max(0.0, float(model.predict(x_now)[0]) + fit[1])


def _ewma_levels(y: np.ndarray) -> np.ndarray:
    values = y.tolist()
    out: list[float] = []
    level = values[0] if values else 0.0
    a = _EWMA_ALPHA
    for v in values:
        level += a * (v - level)
        out.append(level)
    return np.asarray(out)


def _ewma_window(k: int) -> int:
    """Intervals ewma looks back over for a forecast ``k`` intervals ahead: the level forgets
    0.7 per interval, so the last few hundred intervals make it all."""
    return _RESIDUAL_WINDOW + k + 60


class _EwmaLevels:
    """:func:`_ewma_levels` of a window that slides over one series, reusing the last window's.

    The levels of a window depend on where it starts (the first level is its first value), so
    each window's are computed from its own start; but once a level equals, bit for bit, the
    last window's level at the same interval, and the values from there on are the same, every
    later level is the same too (the same float operations on the same operands): those are
    copied instead of recomputed. Windows one interval apart meet again within about a hundred
    levels (0.7 ** 100 is below a double's precision), at once where the values are zeros.
    """

    def __init__(self) -> None:
        self._start = 0
        self._values: list[float] = []
        self._levels: list[float] = []

    def of(self, values: list[float], start: int) -> list[float]:
        """The levels of ``values`` (``_ewma_levels(np.asarray(values)).tolist()``), the
        series' values from interval ``start`` on."""
        old_values, old_levels = self._values, self._levels
        d = start - self._start  # values[i] is the last window's old_values[i + d]
        end = min(len(values), len(old_levels) - d)
        out: list[float] = []
        a = _EWMA_ALPHA
        level = values[0] if values else 0.0
        i = 0
        while i < end:
            level += a * (values[i] - level)
            out.append(level)
            j = i + d
            i += 1
            if j >= 0 and old_levels[j] == level:
                if values[i:end] == old_values[j + 1 : end + d]:  # met: the rest is equal
                    out.extend(old_levels[j + 1 : end + d])
                    level = out[-1]
                    i = end
                break
        for v in values[i:]:
            level += a * (v - level)
            out.append(level)
        self._start, self._values, self._levels = start, values, out
        return out


def quantile(values: np.ndarray | list[float], q: float) -> float:
    """``float(np.quantile(values, q))`` for non-empty values without NaN: numpy's default
    ('linear') method by a sort and numpy's own float operations (its ``_lerp``), at a fraction
    of the call's cost on a few hundred values."""
    s = np.sort(values).tolist() if isinstance(values, np.ndarray) else sorted(values)
    n = len(s)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(s[-1])
    below = math.floor(virtual)
    t = virtual - below
    a, b = s[below], s[below + 1]
    diff = b - a
    if t >= 0.5:
        return float(b - diff * (1 - t))
    return float(a + diff * t)


@dataclass(frozen=True)
class ReplicaForecast:
    """The forecast as the decider's signal, with what it came from (for logs)."""

    replicas: float | None
    """Replicas the forecast demand needs; None: not trusted (no forecast, low confidence)."""
    forecast: Forecast | None
    reason: str


def replicas_for(fc: Forecast, service_s: float, target_concurrency: float | None) -> float:
    """Replicas for forecast ``fc``: Little's law (rate x service time) / target concurrency.

    Fewer than :data:`MIN_ARRIVALS` arrivals per interval ask for none; otherwise at least one
    (a model with any demand needs a replica). Without a concurrency target, one replica.
    """
    if fc.value < MIN_ARRIVALS:
        return 0.0
    if target_concurrency is None:
        return 1.0
    return max(1.0, fc.rate_per_s * max(service_s, 0.0) / target_concurrency)


class ReplicaForecaster:
    """A :class:`Forecaster` gated by ``min_confidence`` and turned into replicas.

    Feed it every arrival (:meth:`observe`) and, to learn the service time by Little's law, the
    requests in the system at each tick (:meth:`observe_concurrency`). :meth:`replicas` is what
    goes into :attr:`autoscaler.decider.ModelObservation.forecast_replicas`.
    """

    def __init__(self, cfg: ForecastConfig, service_s: float | None = None) -> None:
        self.config = cfg
        self.forecaster = Forecaster.from_config(cfg)
        self._fixed_service_s = service_s
        self._arrivals = 0.0
        self._conc_area = 0.0
        self._conc_last: tuple[float, float] | None = None

    def observe(self, t_s: float, value: float = 1.0) -> None:
        self.forecaster.observe(t_s, value)
        self._arrivals += value

    def observe_concurrency(self, t_s: float, in_system: float) -> None:
        """Requests in the system (buffered + at replicas) at ``t_s``: integrated over time."""
        if self._conc_last is not None:
            t0, c0 = self._conc_last
            if t_s > t0:
                self._conc_area += c0 * (t_s - t0)
        self._conc_last = (t_s, in_system)

    def service_s(self) -> float | None:
        """Mean time in the system per request: given, or Little's law (area / arrivals)."""
        if self._fixed_service_s is not None:
            return self._fixed_service_s
        if self._arrivals <= 0 or self._conc_area <= 0:
            return None
        return self._conc_area / self._arrivals

    def replicas(
        self, now_s: float, horizon_s: float, target_concurrency: float | None
    ) -> ReplicaForecast:
        """Replicas the demand at ``now_s + horizon_s`` needs, or None with the reason why not."""
        fc = self.forecaster.forecast(now_s, horizon_s)
        if fc is None:
            return ReplicaForecast(None, None, "too little history")
        if fc.confidence < self.config.min_confidence:
            return ReplicaForecast(
                None,
                fc,
                f"confidence {fc.confidence:.2f} < min_confidence {self.config.min_confidence:g}",
            )
        service = self.service_s()
        if service is None and target_concurrency is not None and fc.value >= MIN_ARRIVALS:
            return ReplicaForecast(None, fc, "no service time yet")
        n = replicas_for(fc, service or 0.0, target_concurrency)
        return ReplicaForecast(
            n,
            fc,
            f"{fc.method} q{fc.quantile:g}: {fc.value:.3g} arrivals per {fc.interval_s:g} s "
            f"at +{horizon_s:.0f} s -> {n:.3g} replicas (confidence {fc.confidence:.2f})",
        )


__all__ = [
    "AUTO_METHOD",
    "AUTO_METHOD_SEASONAL",
    "METHODS",
    "MIN_ARRIVALS",
    "Forecast",
    "Forecaster",
    "Method",
    "ReplicaForecast",
    "ReplicaForecaster",
    "pinball_loss",
    "replicas_for",
]
