"""The activator: Thaw's OpenAI-compatible front door.

It owns the request path from a client to an engine replica: read the body once, find ``model``,
pick the ready replica with the fewest outstanding requests (ties: lower KV usage, then fewer
waiting), forward the original bytes unchanged through one pooled aiohttp session, and answer
with the upstream's bytes — a ``Content-Length`` answer in one send, SSE passed through chunk by
chunk unparsed. With no ready replica the request waits in its model's bounded buffer; the first
one pokes the autoscaler at once, and :meth:`Activator.endpoints_changed` releases the buffer in
arrival order. An upstream that fails before the client saw a byte (refused, reset, 502/503) is
retried once on another replica, else the request waits as at zero; after the first byte a
failure ends the SSE stream with an error event. A client that leaves stops its request: it
leaves the buffer at once, or its upstream connection is dropped (vLLM then aborts the
generation). :meth:`Activator.drain` (graceful shutdown) answers the buffer 503. Nothing is
dropped silently: each request ends with the upstream's answer or one of 400/401/404/413/503/504
in OpenAI's error shape.

The proxied paths are a bare ASGI hot path; everything else (``/v1/models``, ``/health``,
``/metrics``, the OpenAPI document) is the FastAPI app of :mod:`activator.rest` behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from activator.rest import build_rest_app
from activator.routing import choose_replica
from activator.types import DemandSink, EndpointSource, ModelLimits, Replica
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
    """The replica failed before the client saw a byte; the request may go elsewhere."""


class _Refused(Exception):
    """A buffered request's wait ended without a replica; carries the answer to give."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer[0])
        self.answer = answer


@dataclass
class _ModelState:
    limits: ModelLimits
    buffer: deque[asyncio.Future[None]] = field(default_factory=deque)
    in_flight: int = 0


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
        retry_after_s: int = 5,
        connect_timeout_s: float = 5.0,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._endpoints = endpoints
        self._demand = demand
        self._clock = clock
        self._models: dict[str, _ModelState] = {n: _ModelState(lim) for n, lim in models.items()}
        self._api_keys = frozenset(api_keys) if api_keys else None
        self._retry_after = [(b"retry-after", str(retry_after_s).encode())]
        self._connect_timeout_s = connect_timeout_s
        self._recheck_s = recheck_s
        self._outstanding: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
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
        """Open the one pooled upstream session (call inside the serving event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                auto_decompress=False,
                # No Accept-Encoding: the answer's bytes go to a client that did not ask for gzip.
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )

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

    # -- the narrow surface the autoscaler and the actuator use --------------------------------

    def models(self) -> list[str]:
        return sorted(self._models)

    def limits(self, model: str) -> ModelLimits:
        return self._models[model].limits

    def buffered(self, model: str) -> int:
        """Requests of ``model`` waiting for a ready replica now (the autoscaler reads this)."""
        st = self._models.get(model)
        return len(st.buffer) if st else 0

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
                self._models[name].limits = lim
            else:
                self._models[name] = _ModelState(lim)
        self._max_body_bytes = _largest_body(self._models.values())

    def endpoints_changed(self, model: str) -> None:
        """The model's ready replicas changed: release its buffer in arrival order."""
        st = self._models.get(model)
        if st is None or not st.buffer or not self._endpoints.ready_replicas(model):
            return
        while st.buffer:
            fut = st.buffer.popleft()
            if not fut.done():
                fut.set_result(None)
        self.metrics.buffered.labels(model).set(0)

    def _refuse_all(self, model: str, st: _ModelState, answer: Callable[[str], Answer]) -> None:
        while st.buffer:
            fut = st.buffer.popleft()
            if not fut.done():
                fut.set_exception(_Refused(answer(model)))
        self.metrics.buffered.labels(model).set(0)

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
        except ValueError as e:
            return "-", None, _answer(400, f"the body is not valid JSON: {e}", INVALID)
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            return "-", None, _answer(400, f"the body must be a JSON object, got {kind}", INVALID)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return (
                "-",
                None,
                _answer(
                    400,
                    f"'model' is required and must be a non-empty string, got {model!r}",
                    INVALID,
                    "model",
                ),
            )
        st = self._models.get(model)
        if st is None:
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
        """Forward to the best ready replica, retrying once elsewhere before the first byte and
        waiting in the buffer when there is none. The upstream's status once it answered, else
        the answer to give."""
        deadline_s = start_s + st.limits.wait_timeout_s
        tried: set[str] = set()
        failed = 0  # upstream failures before the first byte since the last wait
        while True:
            replicas = self._endpoints.ready_replicas(model)
            replica = None if failed > 1 else choose_replica(replicas, self._outstanding, tried)
            if replica is None:  # none ready, or the one retry is spent: wait as at zero
                watch.start()
                answer = await self._wait(model, st, deadline_s)
                if answer is not None:
                    return answer
                tried.clear()
                failed = 0
                continue
            if failed:
                self.metrics.retries.labels(model).inc()
            try:
                return await self._forward(path, body, replica, send, watch)
            except _UpstreamFailed as e:
                tried.add(replica.replica_id)
                failed += 1
                log.warning("model %s: replica %s failed (%s)", model, replica.replica_id, e)

    async def _wait(self, model: str, st: _ModelState, deadline_s: float) -> Answer | None:
        """Wait in the buffer. None: go pick a replica; else the answer to give."""
        if self._draining:
            return self._shutting_down(model)
        if len(st.buffer) >= st.limits.buffer_size:
            return _answer(
                503,
                f"model {model!r} is scaling up and its buffer is full "
                f"({st.limits.buffer_size} requests); retry later",
                "service_unavailable",
                headers=self._retry_after,
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        first = not st.buffer
        st.buffer.append(fut)
        self.metrics.buffered.labels(model).set(len(st.buffer))
        if first:
            self._spawn(self._poke(model))
        try:
            while True:
                remaining_s = deadline_s - self._clock.monotonic()
                if remaining_s <= 0:
                    return _answer(
                        504,
                        f"no replica of model {model!r} became ready within "
                        f"{st.limits.wait_timeout_s:g} s",
                        "timeout",
                    )
                await asyncio.wait((fut,), timeout=min(remaining_s, self._recheck_s))
                if fut.done():
                    try:
                        fut.result()
                    except _Refused as e:
                        return e.answer
                    return None
                if self._endpoints.ready_replicas(model) and st.buffer and st.buffer[0] is fut:
                    return None  # a missed push; the head of the line goes first
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                st.buffer.remove(fut)
            if self._models.get(model) is st:
                self.metrics.buffered.labels(model).set(len(st.buffer))

    async def _poke(self, model: str) -> None:
        try:
            await self._demand.poke(model)
        except Exception:  # a failed poke must not fail the request; the tick still comes
            log.exception("poking the autoscaler for %s failed", model)

    async def _forward(
        self, path: str, body: bytes, replica: Replica, send: Send, watch: _Watch
    ) -> int:
        """Send ``body`` to ``replica`` and its answer to the client; the upstream's status.
        Raises :class:`_UpstreamFailed` only while the client has seen nothing."""
        if self._session is None:
            raise RuntimeError("Activator.start() was not awaited")
        rid = replica.replica_id
        self._outstanding[rid] = self._outstanding.get(rid, 0) + 1
        try:
            try:
                resp = await self._session.post(
                    replica.base_url + path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise _UpstreamFailed(f"{type(e).__name__}: {e}") from e
            async with resp:
                if resp.status in RETRYABLE_STATUS:
                    raise _UpstreamFailed(f"answered {resp.status}")
                headers = [(k, v) for k, v in resp.raw_headers if k.lower() not in SKIP_HEADERS]
                if resp.content_type != "text/event-stream":
                    try:
                        data = await resp.read()
                    except (TimeoutError, aiohttp.ClientError, OSError) as e:
                        raise _UpstreamFailed(f"{type(e).__name__}: {e}") from e
                    watch.armed = False
                    headers.append((b"content-length", str(len(data)).encode()))
                    await send(
                        {"type": "http.response.start", "status": resp.status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": data})
                    return resp.status
                try:
                    first = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise _UpstreamFailed(f"{type(e).__name__}: {e}") from e
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": headers}
                )
                # From here on the client has bytes: no retry, an error event instead.
                await send({"type": "http.response.body", "body": first, "more_body": True})
                try:
                    async for chunk in resp.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    log.warning("replica %s failed mid-stream: %s", rid, e)
                    event = error_body(
                        f"the model replica failed mid-stream ({type(e).__name__})",
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
            left = self._outstanding.get(rid, 1) - 1
            if left:
                self._outstanding[rid] = left
            else:
                self._outstanding.pop(rid, None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


INVALID = "invalid_request_error"


def _largest_body(states: Iterable[_ModelState]) -> int:
    """The largest body any model accepts: bodies over it are refused before being read."""
    return max((st.limits.max_body_bytes for st in states), default=1)


def _model_gone(model: str, why: str) -> Answer:
    return _answer(404, f"the model {model!r} {why}", "NotFoundError", "model", "model_not_found")


def _too_large(cap: int) -> Answer:
    return _answer(
        413, f"the request body is larger than the model's limit of {cap} bytes", INVALID
    )


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    if status == 499:  # the client is gone; there is no one to answer
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
