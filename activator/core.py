"""The activator: Thaw's OpenAI-compatible front door.

It owns the request path from a client to an engine replica: read the body once, find ``model``,
pick the ready replica with the fewest outstanding requests (ties: lower KV usage, then fewer
waiting), forward the original bytes unchanged through one pooled aiohttp session, and answer
with the upstream's bytes — a ``Content-Length`` answer in one send, SSE passed through chunk by
chunk unparsed. With no ready replica the request waits in its model's bounded buffer; the first
one pokes the autoscaler at once, and :meth:`Activator.endpoints_changed` releases the buffer in
arrival order. An upstream that fails before the client saw a byte (refused, reset, 502/503) is
retried once on another replica, else the request waits as at zero. Nothing is dropped silently:
each request ends with the upstream's answer or one of 400/401/404/413/503/504 in OpenAI's error
shape.

The proxied paths are a bare ASGI hot path; everything else (``/v1/models``, ``/health``,
``/metrics``, the OpenAPI document) is a FastAPI app behind it.
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

from activator.types import DemandSink, EndpointSource, ModelLimits, Replica
from thaw.clock import Clock

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROXIED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
OPEN_PATHS = frozenset({"/health", "/metrics"})
#: Upstream answers that mean "this replica cannot take it now": retried elsewhere.
RETRYABLE_STATUS = frozenset({502, 503})
#: Response headers not copied from the upstream (hop-by-hop, or recomputed here).
SKIP_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)
#: How often a buffered request re-checks for replicas on its own (a safety net for a missed
#: ``endpoints_changed``; the normal release is the push).
RECHECK_S = 1.0
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def error_body(message: str, type_: str, param: str | None, code: int | str | None) -> bytes:
    """OpenAI's error shape."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


class _UpstreamFailed(Exception):
    """The replica failed before the client saw a byte; the request may go elsewhere."""


class _ModelGone(Exception):
    """The model was removed from the policy while the request waited."""


@dataclass
class _ModelState:
    limits: ModelLimits
    buffer: deque[asyncio.Future[None]] = field(default_factory=deque)
    in_flight: int = 0


class ActivatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.buffered = Gauge(
            "thaw_activator_buffered_requests",
            "Requests waiting in the activator for a ready replica.",
            ["model"],
            registry=registry,
        )
        self.requests = Counter(
            "thaw_activator_requests_total",
            "Requests answered by the activator, by model and HTTP status.",
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
        self._retry_after = str(retry_after_s).encode()
        self._connect_timeout_s = connect_timeout_s
        self._recheck_s = recheck_s
        self._outstanding: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ActivatorMetrics(self.registry)
        self._rest = _rest_app(self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the one pooled upstream session (call inside the serving event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                auto_decompress=False,
            )

    async def close(self) -> None:
        for st in self._models.values():
            while st.buffer:
                fut = st.buffer.popleft()
                if not fut.done():
                    fut.set_exception(_ModelGone("the activator is shutting down"))
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the narrow surface the autoscaler and the actuator use --------------------------------

    def models(self) -> list[str]:
        return sorted(self._models)

    def limits(self, model: str) -> ModelLimits:
        return self._models[model].limits

    def buffered(self, model: str) -> int:
        st = self._models.get(model)
        return len(st.buffer) if st else 0

    def in_flight(self, model: str) -> int:
        st = self._models.get(model)
        return st.in_flight if st else 0

    def outstanding(self, replica_id: str) -> int:
        return self._outstanding.get(replica_id, 0)

    def set_models(self, models: Mapping[str, ModelLimits]) -> None:
        """Policy reload: new limits apply to new requests; removed models' waiters get 404."""
        for name in list(self._models):
            if name not in models:
                st = self._models.pop(name)
                while st.buffer:
                    fut = st.buffer.popleft()
                    if not fut.done():
                        fut.set_exception(_ModelGone(f"model {name!r} was removed"))
        for name, lim in models.items():
            if name in self._models:
                self._models[name].limits = lim
            else:
                self._models[name] = _ModelState(lim)

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
                    401,
                    error_body(
                        "missing or invalid API key (send 'Authorization: Bearer KEY')",
                        "authentication_error",
                        None,
                        "invalid_api_key",
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
        disconnect: asyncio.Future[Message] | None = None
        try:
            body, error = await self._read_body(scope, receive)
            if error is not None:
                code = error[0]
                await _respond(send, *error)
                return
            model, st, error = self._parse(body)
            if error is not None or st is None:
                code = error[0] if error else 400
                if error:
                    await _respond(send, *error)
                return
            if len(body) > st.limits.max_body_bytes:
                code = 413
                await _respond(send, *_too_large(st.limits.max_body_bytes))
                return
            disconnect = asyncio.ensure_future(receive())
            st.in_flight += 1
            try:
                code = await self._route(scope["path"], body, model, st, start_s, send, disconnect)
            finally:
                st.in_flight -= 1
        finally:
            if disconnect is not None and not disconnect.done():
                disconnect.cancel()
            if model != "-" or code != 500:
                self.metrics.requests.labels(model, str(code)).inc()
                if model != "-":
                    self.metrics.duration.labels(model).observe(self._clock.monotonic() - start_s)

    async def _read_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[bytes, tuple[int, bytes, list[tuple[bytes, bytes]]] | None]:
        cap = max((st.limits.max_body_bytes for st in self._models.values()), default=1)
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

    def _parse(
        self, body: bytes
    ) -> tuple[str, _ModelState | None, tuple[int, bytes, list[tuple[bytes, bytes]]] | None]:
        try:
            payload = json.loads(body)
        except ValueError as e:
            return (
                "-",
                None,
                (
                    400,
                    error_body(
                        f"the body is not valid JSON: {e}", "invalid_request_error", None, 400
                    ),
                    [],
                ),
            )
        if not isinstance(payload, dict):
            return (
                "-",
                None,
                (
                    400,
                    error_body(
                        f"the body must be a JSON object, got {type(payload).__name__}",
                        "invalid_request_error",
                        None,
                        400,
                    ),
                    [],
                ),
            )
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return (
                "-",
                None,
                (
                    400,
                    error_body(
                        f"'model' is required and must be a non-empty string, got {model!r}",
                        "invalid_request_error",
                        "model",
                        400,
                    ),
                    [],
                ),
            )
        st = self._models.get(model)
        if st is None:
            return (
                "-",
                None,
                (
                    404,
                    error_body(
                        f"the model {model!r} does not exist; served models: "
                        f"{', '.join(sorted(self._models)) or '(none)'}",
                        "NotFoundError",
                        "model",
                        "model_not_found",
                    ),
                    [],
                ),
            )
        return model, st, None

    def _pick(self, model: str, exclude: set[str]) -> Replica | None:
        best: Replica | None = None
        best_key: tuple[int, float, float] | None = None
        for r in self._endpoints.ready_replicas(model):
            if r.replica_id in exclude:
                continue
            key = (
                self._outstanding.get(r.replica_id, 0),
                r.kv_cache_usage_ratio if r.kv_cache_usage_ratio is not None else 0.0,
                r.num_requests_waiting if r.num_requests_waiting is not None else 0.0,
            )
            if best_key is None or key < best_key:
                best, best_key = r, key
        return best

    async def _route(
        self,
        path: str,
        body: bytes,
        model: str,
        st: _ModelState,
        start_s: float,
        send: Send,
        disconnect: asyncio.Future[Message],
    ) -> int:
        deadline_s = start_s + st.limits.wait_timeout_s
        tried: set[str] = set()
        retried = False
        must_wait = False
        while True:
            replica = None if must_wait else self._pick(model, tried)
            if replica is None:
                code = await self._wait(model, st, deadline_s, send, disconnect)
                if code is not None:
                    return code
                tried.clear()
                must_wait = False
                continue
            try:
                return await self._forward(path, body, replica, send)
            except _UpstreamFailed as e:
                tried.add(replica.replica_id)
                if disconnect.done():
                    return 499
                if not retried:
                    retried = True
                    self.metrics.retries.labels(model).inc()
                    log.warning(
                        "model %s: replica %s failed (%s); retrying elsewhere",
                        model,
                        replica.replica_id,
                        e,
                    )
                else:
                    must_wait = True

    async def _wait(
        self,
        model: str,
        st: _ModelState,
        deadline_s: float,
        send: Send,
        disconnect: asyncio.Future[Message],
    ) -> int | None:
        """Wait in the buffer. None: go pick a replica; else the status already answered."""
        if len(st.buffer) >= st.limits.buffer_size:
            await _respond(
                send,
                503,
                error_body(
                    f"model {model!r} is scaling up and its buffer is full "
                    f"({st.limits.buffer_size} requests); retry later",
                    "service_unavailable",
                    None,
                    503,
                ),
                [(b"retry-after", self._retry_after)],
            )
            return 503
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
                    await _respond(
                        send,
                        504,
                        error_body(
                            f"no replica of model {model!r} became ready within "
                            f"{st.limits.wait_timeout_s:g} s",
                            "timeout",
                            None,
                            504,
                        ),
                    )
                    return 504
                await asyncio.wait(
                    (fut, disconnect),
                    timeout=min(remaining_s, self._recheck_s),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if disconnect.done():
                    return 499
                if fut.done():
                    try:
                        fut.result()
                    except _ModelGone as e:
                        await _respond(
                            send,
                            404,
                            error_body(str(e), "NotFoundError", "model", "model_not_found"),
                        )
                        return 404
                    return None
                if self._endpoints.ready_replicas(model) and st.buffer and st.buffer[0] is fut:
                    return None  # a missed push; the head of the line goes first
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                st.buffer.remove(fut)
            if model in self._models:
                self.metrics.buffered.labels(model).set(len(st.buffer))

    async def _poke(self, model: str) -> None:
        try:
            await self._demand.poke(model)
        except Exception:  # a failed poke must not fail the request; the tick still comes
            log.exception("poking the autoscaler for %s failed", model)

    async def _forward(self, path: str, body: bytes, replica: Replica, send: Send) -> int:
        if self._session is None:
            raise RuntimeError("Activator.start() was not awaited")
        rid = replica.replica_id
        self._outstanding[rid] = self._outstanding.get(rid, 0) + 1
        started = False
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
                streaming = resp.content_type == "text/event-stream"
                if not streaming:
                    try:
                        data = await resp.read()
                    except (TimeoutError, aiohttp.ClientError, OSError) as e:
                        raise _UpstreamFailed(f"{type(e).__name__}: {e}") from e
                    headers.append((b"content-length", str(len(data)).encode()))
                    await send(
                        {"type": "http.response.start", "status": resp.status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": data})
                    return resp.status
                first: bytes | None = None
                try:
                    first = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    raise _UpstreamFailed(f"{type(e).__name__}: {e}") from e
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": headers}
                )
                started = True
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
                await send({"type": "http.response.body", "body": b""})
                return resp.status
        except _UpstreamFailed:
            if started:  # cannot happen: failures after the first byte are handled above
                raise RuntimeError("retry after the first byte") from None
            raise
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


def _too_large(cap: int) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return (
        413,
        error_body(
            f"the request body is larger than the model's limit of {cap} bytes",
            "invalid_request_error",
            None,
            413,
        ),
        [],
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


def _rest_app(activator: Activator) -> Any:
    """FastAPI for everything off the hot path, and the OpenAPI document."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import BaseModel, ConfigDict
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(
        title="Thaw activator",
        description="OpenAI-compatible front door: routes by `model`, buffers at zero replicas.",
        version="1",
    )

    class ChatRequest(BaseModel):
        """Any OpenAI chat request; forwarded unchanged."""

        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[dict[str, Any]]

    class CompletionRequest(BaseModel):
        """Any OpenAI completion request; forwarded unchanged."""

        model_config = ConfigDict(extra="allow")
        model: str
        prompt: str | list[Any]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": str(exc.detail),
                    "type": "invalid_request_error",
                    "param": None,
                    "code": exc.status_code,
                }
            },
            status_code=exc.status_code,
        )

    @app.post("/v1/chat/completions", summary="Chat completion (proxied; documentation only)")
    async def _chat(body: ChatRequest) -> dict[str, Any]:  # pragma: no cover - hot path serves
        raise StarletteHTTPException(500, "served by the activator's hot path")

    @app.post("/v1/completions", summary="Completion (proxied; documentation only)")
    async def _completions(body: CompletionRequest) -> dict[str, Any]:  # pragma: no cover
        raise StarletteHTTPException(500, "served by the activator's hot path")

    @app.get("/v1/models", summary="Every configured model, scaled to zero or not")
    async def _models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "owned_by": "thaw",
                    "ready_replicas": len(activator._endpoints.ready_replicas(name)),
                    "buffered_requests": activator.buffered(name),
                }
                for name in activator.models()
            ],
        }

    @app.get("/health", summary="200 while the activator serves")
    async def _health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics")
    async def _metrics() -> Response:
        return Response(generate_latest(activator.registry), media_type=CONTENT_TYPE_LATEST)

    return app
