"""CloudEvents for the autoscaler's decisions and cold starts, sent to Knative's ``K_SINK``.

Owns the event contract and the sender:

- ``dev.thaw.autoscaler.decision`` for every decision that changes a model's replica count,
  data ``{"model", "from", "to", "reason", "panic"}``;
- ``dev.thaw.autoscaler.coldstart`` for every completed cold start (a replica became ready),
  data ``{"model", "tier", "seconds"}``; the tier is a coarse load tier of :mod:`kernel.vocab`
  (``wake`` | ``local_disk`` | ``remote``; ``unknown`` from the Knative controller, which does
  not see the node's cache).

Knative's SinkBinding (and ContainerSource) inject the sink's URL as ``K_SINK`` and optional
extension attributes as ``K_CE_OVERRIDES`` (``{"extensions": {"name": "value"}}``); the events
leave in binary HTTP mode (``ce-*`` headers, JSON body), built with the ``cloudevents`` SDK
(2.x: ``cloudevents.core``).

Sending never stands in the autoscaler's way: :meth:`CloudEventEmitter.decision` and
:meth:`~CloudEventEmitter.cold_start` only enqueue (a bounded queue; when full the event is
dropped and counted), one background task posts them with a timeout per event, and a sink that
fails is logged, never raised. Without ``K_SINK`` :func:`emitter_from_env` returns
:class:`NoEvents`, which sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from kernel.clock import Clock
from kernel.errors import ConfigError
from kernel.vocab import ReportedTier

log = logging.getLogger(__name__)

DECISION_TYPE = "dev.thaw.autoscaler.decision"
COLD_START_TYPE = "dev.thaw.autoscaler.coldstart"
DEFAULT_SOURCE = "/thaw/autoscaler"
#: Knative's environment variables for a sink (SinkBinding, ContainerSource).
SINK_ENV = "K_SINK"
OVERRIDES_ENV = "K_CE_OVERRIDES"
# CloudEvents attribute names: lower-case letters and digits, at most 20 (spec v1.0).
_RESERVED = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
)


class EventSink(Protocol):
    """Where the autoscaler reports; the reports return at once and never raise."""

    def decision(
        self, model: str, from_replicas: int, to_replicas: int, reason: str, panic: bool
    ) -> None: ...

    def cold_start(self, model: str, tier: ReportedTier, seconds: float) -> None: ...

    async def start(self) -> None: ...

    async def close(self, drain_timeout_s: float = 2.0) -> None: ...


class NoEvents:
    """No sink configured: nothing is built, nothing is sent."""

    def decision(
        self, model: str, from_replicas: int, to_replicas: int, reason: str, panic: bool
    ) -> None:
        return None

    def cold_start(self, model: str, tier: ReportedTier, seconds: float) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        return None


def parse_overrides(text: str | None) -> dict[str, str]:
    """The extension attributes of ``K_CE_OVERRIDES`` (``{"extensions": {...}}``); raise
    :class:`~kernel.errors.ConfigError` naming the variable, the value and what is accepted."""
    if not text:
        return {}
    accepted = 'accepted: {"extensions": {"name": "value"}} with lower-case alphanumeric names'
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{OVERRIDES_ENV} = {text!r}: not JSON ({e.msg}); {accepted}") from e
    ext = data.get("extensions", {}) if isinstance(data, dict) else None
    if not isinstance(ext, dict):
        raise ConfigError(f"{OVERRIDES_ENV} = {text!r}: {accepted}")
    out: dict[str, str] = {}
    for name, value in ext.items():
        if not (name.isascii() and name.isalnum() and name.islower() and len(name) <= 20):
            raise ConfigError(f"{OVERRIDES_ENV} extension {name!r}: bad name; {accepted}")
        if name in _RESERVED:
            raise ConfigError(
                f"{OVERRIDES_ENV} extension {name!r}: a CloudEvents core attribute; {accepted}"
            )
        out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class CloudEventEmitter:
    """Posts CloudEvents to one sink URL in binary mode from a bounded queue, fire and forget.

    Build it in the wiring code, :meth:`start` it inside the running loop, :meth:`close` it on
    shutdown (it waits up to ``drain_timeout_s`` for queued events, then drops the rest).
    """

    def __init__(
        self,
        sink_url: str,
        clock: Clock,
        *,
        source: str = DEFAULT_SOURCE,
        extensions: Mapping[str, str] | None = None,
        queue_size: int = 1000,
        timeout_s: float = 5.0,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue_size = {queue_size}, must be >= 1")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s = {timeout_s}, must be > 0")
        self.sink_url = sink_url
        self.clock = clock
        self.source = source
        self.extensions = dict(extensions or {})
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[CloudEvent] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    # -- the EventSink -------------------------------------------------------------------------

    def decision(
        self, model: str, from_replicas: int, to_replicas: int, reason: str, panic: bool
    ) -> None:
        data = {
            "model": model,
            "from": from_replicas,
            "to": to_replicas,
            "reason": reason,
            "panic": panic,
        }
        self._enqueue(DECISION_TYPE, model, data)

    def cold_start(self, model: str, tier: ReportedTier, seconds: float) -> None:
        self._enqueue(COLD_START_TYPE, model, {"model": model, "tier": tier, "seconds": seconds})

    def _enqueue(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        when = datetime.fromtimestamp(self.clock.wall(), UTC)
        attributes: dict[str, Any] = {
            **self.extensions,
            "specversion": "1.0",
            "type": type_,
            "source": self.source,
            "subject": subject,
            "id": str(uuid.uuid4()),
            "time": when,
            "datacontenttype": "application/json",
        }
        try:
            self._queue.put_nowait(CloudEvent(attributes, data))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "CloudEvents: queue full (%d), %d event(s) dropped so far; is %s slow?",
                    self._queue.maxsize,
                    self.dropped,
                    self.sink_url,
                )

    # -- the sender ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session and start the sender task (inside the running loop)."""
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="cloudevents-sender")

    async def _run(self) -> None:
        assert self._session is not None
        while True:
            event = await self._queue.get()
            try:
                await self._post(self._session, event)
            finally:
                self._queue.task_done()

    async def _post(self, session: aiohttp.ClientSession, event: CloudEvent) -> None:
        message = to_binary_event(event)
        try:
            async with session.post(
                self.sink_url, headers=dict(message.headers), data=message.body
            ) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=resp.reason or ""
                    )
            self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as e:
            self.failed += 1
            log.warning("CloudEvents: %s to %s failed: %r", event.get_type(), self.sink_url, e)

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        """Send what is queued (for at most ``drain_timeout_s``), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=drain_timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def emitter_from_env(
    env: Mapping[str, str], clock: Clock, source: str = DEFAULT_SOURCE
) -> CloudEventEmitter | NoEvents:
    """A :class:`CloudEventEmitter` to ``K_SINK`` with ``K_CE_OVERRIDES``'s extensions, or
    :class:`NoEvents` when ``K_SINK`` is unset or empty."""
    sink = env.get(SINK_ENV, "").strip()
    if not sink:
        return NoEvents()
    if not sink.startswith(("http://", "https://")):
        raise ConfigError(f"{SINK_ENV} = {sink!r}: accepted: an http:// or https:// URL")
    return CloudEventEmitter(
        sink, clock, source=source, extensions=parse_overrides(env.get(OVERRIDES_ENV))
    )


__all__ = [
    "COLD_START_TYPE",
    "DECISION_TYPE",
    "CloudEventEmitter",
    "EventSink",
    "NoEvents",
    "emitter_from_env",
    "parse_overrides",
]
