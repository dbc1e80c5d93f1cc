"""Demand the engines cannot see: requests held in front of a revision that has no ready pod.

Knative's activator reports its queue only to Knative's own autoscaler, so Thaw reads demand at
zero from two places, each a :class:`DemandSource`:

- :class:`ThawActivatorDemand` — Thaw's activator (the cluster front door): its ``/metrics``
  gauge ``thaw_activator_buffered_requests{model=...}``, scraped each tick;
- :class:`KnativeActivatorDemand` — Knative activator's Prometheus series (requests queued per
  revision), through Prometheus's HTTP query API; the query is configurable since the series'
  name moved between Knative releases.

:class:`CombinedDemand` takes the largest (one request behind both activators is one request).
Parsing is pure (:func:`parse_buffered`); the fetching is a thin aiohttp call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from kernel.vocab import (
    KNATIVE_NAMESPACE_LABEL,
    KNATIVE_REVISION_LABEL,
    KNATIVE_REVISION_REQUEST_QUEUED,
    THAW_ACTIVATOR_BUFFERED_REQUESTS,
    THAW_ACTIVATOR_MODEL_LABEL,
)

log = logging.getLogger(__name__)

#: Knative activator's requests queued per revision (:mod:`kernel.vocab` names the series and its
#: labels); ``{namespace}`` and ``{revision}`` are filled in per query.
DEFAULT_KNATIVE_QUERY = (
    "sum("
    + KNATIVE_REVISION_REQUEST_QUEUED
    + "{"
    + KNATIVE_NAMESPACE_LABEL
    + '="{namespace}",'
    + KNATIVE_REVISION_LABEL
    + '="{revision}"})'
)


class DemandError(Exception):
    """A demand source could not be read; the controller treats it as no information."""


@dataclass(frozen=True)
class Revision:
    """Which revision (and model) demand is asked for."""

    namespace: str
    name: str
    model: str


class DemandSource(Protocol):
    """Requests held for a revision now (buffered, not yet at an engine)."""

    def new_tick(self) -> None:
        """A new tick begins: forget anything cached during the last one."""

    async def buffered(self, revision: Revision) -> int: ...


def parse_buffered(text: str) -> dict[str, int]:
    """``/metrics`` text of Thaw's activator -> buffered requests per model."""
    out: dict[str, int] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise DemandError(f"activator /metrics is not Prometheus text: {e}") from e
    for family in families:
        for s in family.samples:
            model = s.labels.get(THAW_ACTIVATOR_MODEL_LABEL)
            if s.name == THAW_ACTIVATOR_BUFFERED_REQUESTS and model is not None:
                out[model] = out.get(model, 0) + int(s.value)
    return out


class ThawActivatorDemand:
    """Scrapes Thaw's activator ``/metrics`` (one scrape serves every revision of a tick)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float = 2.0):
        self.session = session
        self.url = base_url.rstrip("/") + "/metrics"
        self.timeout_s = timeout_s
        self._cache: dict[str, int] | None = None
        self._lock = asyncio.Lock()  # PAs reconcile concurrently: one scrape per tick

    def new_tick(self) -> None:
        """Forget the last scrape; the next :meth:`buffered` scrapes again."""
        self._cache = None

    async def buffered(self, revision: Revision) -> int:
        async with self._lock:
            return (await self._scrape()).get(revision.model, 0)

    async def _scrape(self) -> dict[str, int]:
        if self._cache is None:
            try:
                async with self.session.get(
                    self.url, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
                ) as resp:
                    if resp.status != 200:
                        raise DemandError(f"GET {self.url}: HTTP {resp.status}")
                    self._cache = parse_buffered(await resp.text())
            except (aiohttp.ClientError, TimeoutError) as e:
                raise DemandError(f"GET {self.url}: {e!r}") from e
        return self._cache


class KnativeActivatorDemand:
    """Knative activator's queue for a revision, from Prometheus (``/api/v1/query``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        prometheus_url: str,
        query: str = DEFAULT_KNATIVE_QUERY,
        timeout_s: float = 2.0,
    ) -> None:
        self.session = session
        self.url = prometheus_url.rstrip("/") + "/api/v1/query"
        self.query = query
        self.timeout_s = timeout_s

    def new_tick(self) -> None:
        pass  # nothing cached: one query per revision

    async def buffered(self, revision: Revision) -> int:
        q = self.query.replace("{namespace}", revision.namespace).replace(
            "{revision}", revision.name
        )
        try:
            async with self.session.get(
                self.url, params={"query": q}, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise DemandError(f"Prometheus query {q!r}: {e!r}") from e
        if body.get("status") != "success":
            raise DemandError(f"Prometheus query {q!r}: {body.get('error', body)}")
        result = body.get("data", {}).get("result", [])
        return sum(int(float(r["value"][1])) for r in result)


class CombinedDemand:
    """The largest demand any source reports; a source that fails is skipped this tick."""

    def __init__(self, sources: Sequence[DemandSource]) -> None:
        self.sources = tuple(sources)
        #: The latest failures (at most 100), newest last; each is also logged.
        self.errors: deque[str] = deque(maxlen=100)

    def new_tick(self) -> None:
        for s in self.sources:
            s.new_tick()

    async def buffered(self, revision: Revision) -> int:
        best = 0
        for s in self.sources:
            try:
                best = max(best, await s.buffered(revision))
            except DemandError as e:
                self.errors.append(str(e))
                log.warning("demand for %s/%s: %s", revision.namespace, revision.name, e)
        return best
