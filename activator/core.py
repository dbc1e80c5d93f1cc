"""The activator: Thaw's OpenAI-compatible front door.

It owns the request path from a client to an engine replica: read the body once, find ``model``,
pick the ready replica with the fewest outstanding requests (ties: lower KV usage, then fewer
waiting), forward the original bytes unchanged over a pooled keep-alive connection
(:mod:`activator.upstream`), and answer
with the upstream's bytes — a ``Content-Length`` answer in one send, SSE passed through chunk by
chunk unparsed.

The buffer: with no replica that can take it (none ready, every one ejected, or every one at
``max_concurrency_per_replica``) a request waits in its model's buffer, bounded in requests and
in body bytes (more: 503 with ``Retry-After``); while the buffer holds anyone, a new request
queues behind it. The first one pokes the autoscaler at once; waiters are released in arrival
order, as many as the replicas have room for, when replicas appear
(:meth:`Activator.endpoints_changed`), when a request at a replica ends, and when an ejected
replica is back.

Failures: an upstream that fails before the client saw a byte (refused, reset, 502/503) is
retried once on another replica, else the request waits as at zero. An upstream that does not
connect, or send its first byte, in time (``upstream_*_timeout_s``) is ejected from routing
until its ``/health`` answers 200 again (probed every second); the request is retried once on
another replica, else answered 504 with ``Retry-After``. After the first byte a failure, or a
silence past ``upstream_idle_timeout_s``, ends the SSE stream with an error event. A client that
leaves stops its request: it leaves the buffer at once, or its upstream connection is dropped
(vLLM then aborts the generation). :meth:`Activator.drain` (graceful shutdown) answers the buffer
503. Bad input is refused with a 4xx (never a 500): a body that is not a JSON object, nests
deeper than :data:`MAX_JSON_DEPTH`, or names an over-long model; user values are quoted in
error messages at most :data:`SHOW_CHARS` characters long. Nothing is dropped silently: each
request ends with the upstream's answer or one of 400/401/404/408/413/503/504 in OpenAI's error
shape, and every 503/504 (and an upstream's 429/504) carries ``Retry-After``.

The proxied paths are a bare ASGI hot path; everything else (``/v1/models``, ``/health``,
``/metrics``, the OpenAPI document) is the FastAPI app of :mod:`activator.rest` behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from activator.rest import build_rest_app
from activator.routing import choose_replica, free_slots
from activator.types import DemandSink, EndpointSource, ModelLimits, Replica, ServerLimits
from activator.upstream import UpstreamError, UpstreamPool, UpstreamResponse, header
from kernel.clock import Clock
from kernel.vocab import THAW_ACTIVATOR_BUFFERED_REQUESTS, THAW_ACTIVATOR_MODEL_LABEL

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An answer the activator makes itself: status, JSON body, extra headers.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

PROXIED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
OPEN_PATHS = frozenset({"/health", "/metrics"})
#: Upstream answers that mean "this replica cannot take it now": retried elsewhere.
RETRYABLE_STATUS = frozenset({502, 503})
#: Response headers not copied from the upstream (hop-by-hop, or recomputed here).
SKIP_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)
#: A request still under way after this long starts watching for its client's disconnect.
WATCH_AFTER_S = 0.05
#: How often a buffered request re-checks for replicas on its own (a safety net for a missed
#: ``endpoints_changed``; the normal release is the push).
RECHECK_S = 1.0
#: An ejected replica's ``/health`` is probed this often, each probe given this long.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
#: Deepest JSON nesting accepted in a body (OpenAI's tool schemas nest a dozen levels or so).
MAX_JSON_DEPTH = 100
#: Longest ``model`` value accepted (a configured name has at most 200 characters).
MAX_MODEL_NAME_CHARS = 256
#: A user's value is quoted in an error message at most this long.
SHOW_CHARS = 80
#: Scope key the server's protocol sets when it timed out a request's body (answered 408).
CLIENT_TIMEOUT_KEY = "thaw.client_timeout"
#: Upstream answers that ask the client to come back: Retry-After is added if they lack one.
COME_BACK_STATUS = frozenset({429, 503, 504})
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def error_body(message: str, type_: str, param: str | None, code: int | str | None) -> bytes:
    """OpenAI's error shape."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _answer(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: int | str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Answer:
    return (
        status,
        error_body(message, type_, param, status if code is None else code),
        headers or [],
    )


class _UpstreamFailed(Exception):
    """The replica failed before the client saw a byte; the request may go elsewhere.
    ``timeout``: the phase that timed out (``connect`` or ``first_byte``), else None."""

    def __init__(self, reason: str, timeout: str | None = None) -> None:
        super().__init__(reason)
        self.timeout = timeout


class _Refused(Exception):
    """A buffered request's wait ended without a replica; carries the answer to give."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer[0])
        self.answer = answer


@dataclass
class _ModelState:
    """One model's limits and buffer. ``buffer`` may still hold futures of waiters that left
    (done, skipped when met); ``waiting`` is the true count."""

    limits: ModelLimits
    buffer: deque[asyncio.Future[None]] = field(default_factory=deque)
    waiting: int = 0  # requests in the buffer now
    buffer_bytes: int = 0  # their bodies' bytes
    released: int = 0  # released from the buffer, not yet at a replica
    in_flight: int = 0

    @classmethod
    def of(cls, limits: ModelLimits) -> _ModelState:
        return cls(limits)

    def set_limits(self, limits: ModelLimits) -> None:
        self.limits = limits

    def compact(self) -> None:
        """Drop the futures of waiters that left, once they outnumber the live ones."""
        if len(self.buffer) > 2 * self.waiting + 64:
            self.buffer = deque(f for f in self.buffer if not f.done())


class _Watch:
    """Cancels a request's task when its client disconnects, until its answer has begun: a
    waiting request leaves the buffer at once, a forwarded one drops its upstream connection
    (which makes vLLM abort the generation). Watching takes a task, so it starts only when the
    request waits in the buffer or is still under way after :data:`WATCH_AFTER_S`."""

    __slots__ = ("armed", "gone", "receive", "task", "timer", "watcher")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.task = task
        self.receive = receive
        self.armed = True
        self.gone = False
        self.watcher: asyncio.Future[Message] | None = None
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self.start)

    def start(self) -> None:
        if self.watcher is None and self.armed:
            self.watcher = asyncio.ensure_future(self.receive())
            self.watcher.add_done_callback(self._fired)

    def _fired(self, _: asyncio.Future[Message]) -> None:
        if self.armed:
            self.armed = False
            self.gone = True
            self.task.cancel()

    def stop(self) -> None:
        self.armed = False
        self.timer.cancel()
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


class ActivatorMetrics:
    """The activator's Prometheus series, in the registry it was given (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.buffered = Gauge(
            THAW_ACTIVATOR_BUFFERED_REQUESTS,
            "Requests waiting in the activator for a ready replica.",
            [THAW_ACTIVATOR_MODEL_LABEL],
            registry=registry,
        )
        self.requests = Counter(
            "thaw_activator_requests_total",
            "Requests answered by the activator, by model and HTTP status "
            "(499: the client left first; model '-': no configured model named).",
            ["model", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "thaw_activator_request_duration_seconds",
            "From the request's arrival to the end of its answer (buffer wait included).",
            ["model"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.retries = Counter(
            "thaw_activator_upstream_retries_total",
            "Requests retried on another replica after a failure before the first byte.",
            ["model"],
            registry=registry,
        )
        self.buffered_bytes = Gauge(
            "thaw_activator_buffered_bytes",
            "Request body bytes held in the activator's buffer (bounded by buffer_max_bytes).",
            ["model"],
            registry=registry,
        )
        self.upstream_timeouts = Counter(
            "thaw_activator_upstream_timeouts_total",
            "Upstream requests that timed out, by phase (connect|first_byte|idle).",
            ["model", "phase"],
            registry=registry,
        )
        self.ejected = Gauge(
            "thaw_activator_ejected_replicas",
            "Replicas taken out of routing after a timeout, until their /health answers 200.",
            ["model"],
            registry=registry,
        )
        self.client_timeouts = Counter(
            "thaw_activator_client_timeouts_total",
            "Client connections closed with a 408 for sending a request too slowly, by phase "
            "(header|body).",
            ["phase"],
            registry=registry,
        )


class Activator:
    """Routes OpenAI requests by ``model``; buffers at zero; an ASGI application."""

    def __init__(
        self,
        models: Mapping[str, ModelLimits],
        endpoints: EndpointSource,
        demand: DemandSink,
        clock: Clock,
        *,
        registry: CollectorRegistry | None = None,
        api_keys: Iterable[str] | None = None,
        server: ServerLimits | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._endpoints = endpoints
        self._demand = demand
        self._clock = clock
        self._models: dict[str, _ModelState] = {n: _ModelState.of(lim) for n, lim in models.items()}
        self._api_keys = frozenset(api_keys) if api_keys else None
        self.server_limits = server if server is not None else ServerLimits()
        self._retry_after = _retry_after(self.server_limits)
        self._recheck_s = recheck_s
        self._outstanding: dict[str, int] = {}
        self._ejected: dict[str, str] = {}  # replica id -> model, while out of routing
        self._upstream: UpstreamPool | None = None  # the hot path's connections to replicas
        self._session: aiohttp.ClientSession | None = None  # probes of ejected replicas
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._max_body_bytes = _largest_body(self._models.values())
        self._children: dict[tuple[str, int], Any] = {}  # (model, code) -> metric children
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ActivatorMetrics(self.registry)
        self._rest = build_rest_app(self)

    @property
    def asgi_app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI application (the activator itself): the hot path, FastAPI behind it."""
        return self

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream connection pool, and the session that probes ejected replicas
        (call inside the serving event loop)."""
        if self._upstream is None:
            self._upstream = UpstreamPool()
        if self._session is None:
            self._session = aiohttp.ClientSession()

    def drain(self) -> None:
        """Shutting down: every buffered request is answered 503 with ``Retry-After`` now, and
        so is any later one that would wait; requests already at a replica go on to the end."""
        self._draining = True
        for name, st in self._models.items():
            self._refuse_all(name, st, self._shutting_down)

    async def close(self) -> None:
        """Drain, then close the upstream session (after the server stopped)."""
        self.drain()
        for task in list(self._tasks):  # pokes still under way
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    # -- the narrow surface the autoscaler and the actuator use --------------------------------

    def models(self) -> list[str]:
        return sorted(self._models)

    def limits(self, model: str) -> ModelLimits:
        return self._models[model].limits

    def buffered(self, model: str) -> int:
        """Requests of ``model`` waiting for a replica now (the autoscaler reads this)."""
        st = self._models.get(model)
        return st.waiting if st else 0

    def ejected(self) -> dict[str, str]:
        """Replicas out of routing after a timeout now: replica id -> model."""
        return dict(self._ejected)

    def in_flight(self, model: str) -> int:
        """Requests of ``model`` inside the activator now: buffered or at a replica."""
        st = self._models.get(model)
        return st.in_flight if st else 0

    def ready_count(self, model: str) -> int:
        """Ready replicas of ``model`` now, as the endpoint source says."""
        return len(self._endpoints.ready_replicas(model))

    def outstanding(self, replica_id: str) -> int:
        """Requests the activator has at ``replica_id`` now."""
        return self._outstanding.get(replica_id, 0)

    def set_models(self, models: Mapping[str, ModelLimits]) -> None:
        """Policy reload: new limits apply to new requests; removed models' waiters get 404."""
        for name in list(self._models):
            if name not in models:
                st = self._models.pop(name)
                self._refuse_all(name, st, lambda m: _model_gone(m, "was removed"))
        for name, lim in models.items():
            if name in self._models:
                self._models[name].set_limits(lim)
                self._release(name, self._models[name])  # room may have grown
            else:
                self._models[name] = _ModelState.of(lim)
        self._max_body_bytes = _largest_body(self._models.values())

    def set_server_limits(self, limits: ServerLimits) -> None:
        """Policy reload: new client timeouts apply to new requests, Retry-After at once."""
        self.server_limits = limits
        self._retry_after = _retry_after(limits)

    def client_timed_out(self, phase: str) -> None:
        """The server closed a connection with a 408 (``header`` or ``body`` too slow)."""
        self.metrics.client_timeouts.labels(phase).inc()
        if phase == "header":  # no request reached the app: count the answer here
            self._record("-", 408, self._clock.monotonic())

    def endpoints_changed(self, model: str) -> None:
        """The model's ready replicas changed: release its buffer in arrival order."""
        st = self._models.get(model)
        if st is not None and st.waiting:
            self._release(model, st)

    def _release(self, model: str, st: _ModelState) -> None:
        """Release waiters in arrival order, as many as the replicas have room for now."""
        if not st.waiting:
            return
        replicas = self._endpoints.ready_replicas(model)
        if not replicas:
            return
        room = free_slots(
            replicas, self._outstanding, self._ejected, st.limits.max_concurrency_per_replica
        )
        room -= st.released
        while room > 0 and st.buffer:
            fut = st.buffer.popleft()
            if fut.done():  # its waiter left
                continue
            fut.set_result(None)
            st.waiting -= 1
            st.released += 1
            room -= 1
        self._export_buffer(model, st)

    def _refuse_all(self, model: str, st: _ModelState, answer: Callable[[str], Answer]) -> None:
        while st.buffer:
            fut = st.buffer.popleft()
            if not fut.done():
                fut.set_exception(_Refused(answer(model)))
                st.waiting -= 1
        self._export_buffer(model, st)

    def _export_buffer(self, model: str, st: _ModelState) -> None:
        if self._models.get(model) is st:
            self.metrics.buffered.labels(model).set(st.waiting)
            self.metrics.buffered_bytes.labels(model).set(st.buffer_bytes)

    def _shutting_down(self, model: str) -> Answer:
        return _answer(
            503,
            f"the activator is shutting down; retry the request for model {model!r}",
            "service_unavailable",
            headers=self._retry_after,
        )

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if (
                self._api_keys is not None
                and path not in OPEN_PATHS
                and not self._authorized(scope)
            ):
                await _respond(
                    send,
                    *_answer(
                        401,
                        "missing or invalid API key (send 'Authorization: Bearer KEY')",
                        "authentication_error",
                        code="invalid_api_key",
                    ),
                )
                return
            if path in PROXIED_PATHS and scope["method"] == "POST":
                await self._proxy(scope, receive, send)
                return
        await self._rest(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, token = v.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and token.strip() in (self._api_keys or ())
        return False

    # -- the hot path --------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        start_s = self._clock.monotonic()
        model = "-"
        code = 500
        watch: _Watch | None = None
        try:
            body, error = await self._read_body(scope, receive)
            if error is not None:
                code = error[0]
                await _respond(send, *error)
                return
            model, st, error = self._parse(body)
            if st is None:
                code = error[0] if error else 400
                if error:
                    await _respond(send, *error)
                return
            if len(body) > st.limits.max_body_bytes:
                code = 413
                await _respond(send, *_too_large(st.limits.max_body_bytes))
                return
            task = asyncio.current_task()
            assert task is not None
            watch = _Watch(task, receive)
            st.in_flight += 1
            try:
                target = scope["path"]
                if scope["query_string"]:
                    target += "?" + scope["query_string"].decode("latin-1")
                result = await self._route(target, body, model, st, start_s, send, watch)
            except asyncio.CancelledError:
                if not watch.gone or task.uncancel() > 0:
                    raise
                result = 499  # the client left; no one to answer
            finally:
                st.in_flight -= 1
            if isinstance(result, int):
                code = result
            else:
                watch.armed = False
                code = result[0]
                await _respond(send, *result)
        finally:
            if watch is not None:
                watch.stop()
            if model != "-" or code != 500:
                self._record(model, code, start_s)

    def _record(self, model: str, code: int, start_s: float) -> None:
        """Count the answer, and time it for a configured model (label children cached)."""
        children = self._children.get((model, code))
        if children is None:
            duration = self.metrics.duration.labels(model) if model != "-" else None
            children = (self.metrics.requests.labels(model, str(code)), duration)
            self._children[(model, code)] = children
        children[0].inc()
        if children[1] is not None:
            children[1].observe(self._clock.monotonic() - start_s)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, Answer | None]:
        cap = self._max_body_bytes
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > cap:
                return b"", _too_large(cap)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if scope.get(CLIENT_TIMEOUT_KEY):  # the server answered 408 and closed
                    return b"", (408, b"", [])
                return b"", (499, b"", [])
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                return b"", _too_large(cap)
            chunks.append(chunk)
            more = msg.get("more_body", False)
        return b"".join(chunks), None

    def _parse(self, body: bytes) -> tuple[str, _ModelState | None, Answer | None]:
        """``model`` from the body (the only field read), its state, or the error answer."""
        try:
            payload = json.loads(body)
        except RecursionError:
            return "-", None, _too_deep()
        except ValueError as e:
            return "-", None, _answer(400, f"the body is not valid JSON: {e}", INVALID)
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            return "-", None, _answer(400, f"the body must be a JSON object, got {kind}", INVALID)
        # Only a body with that many brackets can nest that deep: most bodies skip the walk.
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nests_deeper(
            payload, MAX_JSON_DEPTH
        ):
            return "-", None, _too_deep()
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return (
                "-",
                None,
                _answer(
                    400,
                    f"'model' is required and must be a non-empty string, got {_show(model)}",
                    INVALID,
                    "model",
                ),
            )
        st = self._models.get(model)
        if st is None:
            if len(model) > MAX_MODEL_NAME_CHARS:
                return (
                    "-",
                    None,
                    _answer(
                        400,
                        f"'model' is {len(model)} characters long, at most "
                        f"{MAX_MODEL_NAME_CHARS} are accepted: {_show(model)}",
                        INVALID,
                        "model",
                    ),
                )
            served = ", ".join(sorted(self._models)) or "(none)"
            return "-", None, _model_gone(model, f"does not exist; served models: {served}")
        return model, st, None

    async def _route(
        self,
        path: str,
        body: bytes,
        model: str,
        st: _ModelState,
        start_s: float,
        send: Send,
        watch: _Watch,
    ) -> int | Answer:
        """Forward to the best replica with room, queueing behind the buffer while it holds
        anyone; retry once elsewhere before the first byte; wait in the buffer when no replica
        can take it. The upstream's status once it answered, else the answer to give."""
        deadline_s = start_s + st.limits.wait_timeout_s
        tried: set[str] | None = None
        failures = 0  # upstream failures before the first byte since the last wait
        admitted = False  # past the queue: never queues behind later arrivals again
        timed_out: _UpstreamFailed | None = None
        while True:
            replica = None
            if failures < 2 and (admitted or not st.waiting):
                exclude: Collection[str] = (
                    self._ejected if tried is None else tried.union(self._ejected)
                )
                replica = choose_replica(
                    self._endpoints.ready_replicas(model),
                    self._outstanding,
                    exclude,
                    st.limits.max_concurrency_per_replica,
                )
            if replica is None:
                if timed_out is not None:  # no replica to retry on: come back later
                    return self._upstream_timed_out(model, st, timed_out)
                watch.start()
                answer = await self._wait(model, st, deadline_s, len(body), front=admitted)
                if answer is not None:
                    return answer
                admitted = True
                tried = None
                failures = 0
                continue
            admitted = True
            if failures:
                self.metrics.retries.labels(model).inc()
            try:
                return await self._forward(path, body, model, st, replica, send, watch)
            except _UpstreamFailed as e:
                failures += 1
                if tried is None:
                    tried = set()
                tried.add(replica.replica_id)
                if e.timeout is not None:
                    timed_out = e
                    self.metrics.upstream_timeouts.labels(model, e.timeout).inc()
                    self._eject(model, replica, str(e))
                log.warning("model %s: replica %s failed (%s)", model, replica.replica_id, e)

    def _upstream_timed_out(self, model: str, st: _ModelState, e: _UpstreamFailed) -> Answer:
        lim = st.limits
        limit_s = (
            lim.upstream_connect_timeout_s
            if e.timeout == "connect"
            else lim.upstream_first_byte_timeout_s
        )
        what = "accept a connection" if e.timeout == "connect" else "send its first byte"
        return _answer(
            504,
            f"no replica of model {model!r} could take the request: the one tried did not "
            f"{what} within {limit_s:g} s; retry later",
            "timeout",
            headers=self._retry_after,
        )

    async def _wait(
        self, model: str, st: _ModelState, deadline_s: float, size: int, *, front: bool
    ) -> Answer | None:
        """Wait in the buffer (at its head if ``front``: released before, room taken by
        another). None: go pick a replica; else the answer to give."""
        if self._draining:
            return self._shutting_down(model)
        lim = st.limits
        if st.waiting >= lim.buffer_size:
            return self._buffer_full(model, f"{lim.buffer_size} requests")
        if st.buffer_bytes + size > lim.buffer_max_bytes:
            return self._buffer_full(model, f"{lim.buffer_max_bytes} bytes of request bodies")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        first = not st.waiting
        st.compact()
        if front:
            st.buffer.appendleft(fut)
        else:
            st.buffer.append(fut)
        st.waiting += 1
        st.buffer_bytes += size
        self._export_buffer(model, st)
        if first:
            self._spawn(self._poke(model))
        try:
            while True:
                remaining_s = deadline_s - self._clock.monotonic()
                if remaining_s <= 0:
                    return _answer(
                        504,
                        f"no replica of model {model!r} could take the request within "
                        f"{lim.wait_timeout_s:g} s; retry later",
                        "timeout",
                        headers=self._retry_after,
                    )
                await asyncio.wait((fut,), timeout=min(remaining_s, self._recheck_s))
                if fut.done():
                    try:
                        fut.result()
                    except _Refused as e:
                        return e.answer
                    return None
                self._release(model, st)  # a safety net for a missed push
        finally:
            if not fut.done():  # left: timed out, or the client went away
                fut.cancel()
                st.waiting -= 1
            elif not fut.cancelled() and fut.exception() is None:
                st.released -= 1  # released: it takes its room now (or waits again)
            st.buffer_bytes -= size
            self._export_buffer(model, st)

    def _buffer_full(self, model: str, what: str) -> Answer:
        return _answer(
            503,
            f"model {model!r} has no replica with room and its buffer is full ({what}); "
            "retry later",
            "service_unavailable",
            headers=self._retry_after,
        )

    async def _poke(self, model: str) -> None:
        try:
            await self._demand.poke(model)
        except Exception:  # a failed poke must not fail the request; the tick still comes
            log.exception("poking the autoscaler for %s failed", model)

    async def _forward(
        self,
        path: str,
        body: bytes,
        model: str,
        st: _ModelState,
        replica: Replica,
        send: Send,
        watch: _Watch,
    ) -> int:
        """Send ``body`` to ``replica`` and its answer to the client; the upstream's status.
        Raises :class:`_UpstreamFailed` only while the client has seen nothing."""
        if self._upstream is None:
            raise RuntimeError("Activator.start() was not awaited")
        rid = replica.replica_id
        lim = st.limits
        self._outstanding[rid] = self._outstanding.get(rid, 0) + 1
        resp: UpstreamResponse | None = None
        try:
            try:
                resp = await self._upstream.post(
                    replica.base_url,
                    path,
                    body,
                    connect_timeout_s=lim.upstream_connect_timeout_s,
                    first_byte_timeout_s=lim.upstream_first_byte_timeout_s,
                )
            except UpstreamError as e:
                raise _failed(e) from e
            if resp.status in RETRYABLE_STATUS:
                raise _UpstreamFailed(f"answered {resp.status}")
            headers = [(k, v) for k, v in resp.raw_headers if k.lower() not in SKIP_HEADERS]
            if resp.content_type != "text/event-stream":
                try:
                    data = await resp.read()
                except UpstreamError as e:
                    raise _failed(e) from e
                watch.armed = False
                if resp.status in COME_BACK_STATUS and header(headers, b"retry-after") is None:
                    headers += self._retry_after
                headers.append((b"content-length", str(len(data)).encode()))
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": data})
                return resp.status
            try:
                first = await resp.chunk()
            except UpstreamError as e:
                raise _failed(e) from e
            resp.set_timeout(lim.upstream_idle_timeout_s)
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            # From here on the client has bytes: no retry, an error event instead.
            await send({"type": "http.response.body", "body": first or b"", "more_body": True})
            try:
                while (chunk := await resp.chunk()) is not None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamError as e:
                silent = e.timeout is not None
                log.warning("replica %s failed mid-stream: %s", rid, e)
                if silent:
                    self.metrics.upstream_timeouts.labels(model, "idle").inc()
                    self._eject(model, replica, "silent mid-stream")
                event = error_body(
                    "the model replica "
                    + ("went silent" if silent else "failed")
                    + f" mid-stream ({e})",
                    "upstream_error",
                    None,
                    502,
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + event + b"\n\n",
                        "more_body": True,
                    }
                )
            watch.armed = False
            await send({"type": "http.response.body", "body": b""})
            return resp.status
        finally:
            if resp is not None:
                resp.release()
            left = self._outstanding.get(rid, 1) - 1
            if left:
                self._outstanding[rid] = left
            else:
                self._outstanding.pop(rid, None)
            if st.waiting:  # room at this replica for the head of the line
                self._release(model, st)

    # -- ejection --------------------------------------------------------------------------

    def _eject(self, model: str, replica: Replica, why: str) -> None:
        """Take ``replica`` out of routing until its ``/health`` answers 200."""
        rid = replica.replica_id
        if rid in self._ejected:
            return
        self._ejected[rid] = model
        self.metrics.ejected.labels(model).inc()
        log.warning(
            "model %s: replica %s ejected from routing (%s); probing its /health every %g s",
            model,
            rid,
            why,
            PROBE_INTERVAL_S,
        )
        self._spawn(self._probe(model, replica))

    async def _probe(self, model: str, replica: Replica) -> None:
        rid = replica.replica_id
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        outcome = "gone from the endpoints"
        try:
            while True:
                await asyncio.sleep(PROBE_INTERVAL_S)
                if not any(r.replica_id == rid for r in self._endpoints.ready_replicas(model)):
                    break
                if self._session is None:
                    return
                try:
                    async with self._session.get(
                        replica.base_url + "/health", timeout=timeout
                    ) as resp:
                        if resp.status == 200:
                            outcome = "back in routing: /health answered 200"
                            break
                except (TimeoutError, aiohttp.ClientError, OSError):
                    continue
        finally:
            if self._ejected.pop(rid, None) is not None:
                self.metrics.ejected.labels(model).dec()
        log.info("model %s: replica %s %s", model, rid, outcome)
        st = self._models.get(model)
        if st is not None:
            self._release(model, st)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


INVALID = "invalid_request_error"


def _largest_body(states: Iterable[_ModelState]) -> int:
    """The largest body any model accepts: bodies over it are refused before being read."""
    return max((st.limits.max_body_bytes for st in states), default=1)


def _model_gone(model: str, why: str) -> Answer:
    return _answer(
        404, f"the model {_show(model)} {why}", "NotFoundError", "model", "model_not_found"
    )


def _show(value: Any) -> str:
    """``repr(value)``, cut to :data:`SHOW_CHARS` characters: a user's value in a message."""
    text = repr(value)
    if len(text) <= SHOW_CHARS:
        return text
    return f"{text[: SHOW_CHARS - 25]}... ({len(text)} characters)"


def _too_deep() -> Answer:
    return _answer(400, f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", INVALID)


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether the parsed JSON ``value`` nests lists and objects deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _failed(e: UpstreamError) -> _UpstreamFailed:
    """The failure before the first forwarded byte: a timeout names its phase."""
    if e.timeout == "connect":
        return _UpstreamFailed(str(e), "connect")
    if e.timeout is not None:
        return _UpstreamFailed(str(e), "first_byte")
    return _UpstreamFailed(str(e))


def _retry_after(limits: ServerLimits) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(limits.retry_after_s).encode())]


def _too_large(cap: int) -> Answer:
    return _answer(
        413, f"the request body is larger than the model's limit of {cap} bytes", INVALID
    )


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if status == 499 or not body:  # the client is gone (or was answered 408 by the server)
        return
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
