"""Serving the activator with uvicorn on one address, lean (no access log, no lifespan, no proxy
headers, no websockets, no signal handlers of its own: the caller owns SIGINT/SIGTERM and sets
``stop`` or cancels), and shutting it down gracefully.

The connection protocol is uvicorn's httptools one with two additions:

- client read timeouts (:class:`activator.types.ServerLimits`, read live from the activator):
  a connection gets ``header_timeout_s`` from its opening, or from the first byte of its next
  request, to the end of that request's headers, then ``body_timeout_s`` to the end of its body;
  past either it is answered 408 (OpenAI's error shape, ``Connection: close``) and closed. uvicorn
  alone times out neither, so a client that sends part of a request and then nothing (slowloris)
  held its connection forever. A request that arrives whole in one read arms no timer at all;
- each connection's writes made in one event-loop iteration leave in one ``write`` syscall:
  uvicorn writes a response's head and its body separately, and on loopback a syscall per write
  is a large part of what a proxied request costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import uvicorn

from activator.core import CLIENT_TIMEOUT_KEY, Activator

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _CoalescingTransport:
    """A connection's transport whose writes within one loop iteration go out as one."""

    __slots__ = ("_buffer", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buffer.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _timeout_answer(phase: str, limit_s: float) -> bytes:
    """The raw 408 a connection gets when its request's headers or body came too slowly."""
    what = "headers" if phase == "header" else "body"
    body = json.dumps(
        {
            "error": {
                "message": f"the request's {what} did not arrive within {limit_s:g} s",
                "type": "invalid_request_error",
                "param": None,
                "code": 408,
            }
        }
    ).encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


def _http_protocol(activator: Activator) -> Any:
    """uvicorn's httptools protocol with client timeouts and coalesced writes (see the module
    docstring), bound to ``activator``; uvicorn's own choice without httptools."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return "auto"

    class FrontDoorProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = activator.server_limits.keepalive_timeout_s  # type: ignore[assignment]
            self._reading: str | None = None  # "header" or "body" while a request arrives
            self._armed: str | None = None  # the phase the timer was armed for
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            wrapped = _CoalescingTransport(transport, self.loop)
            super().connection_made(wrapped)  # type: ignore[arg-type]
            self._reading = "header"
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._reading != self._armed:
                self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading = "header"

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._reading = "body"

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reading = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._reading = None
            self._arm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._armed = phase = self._reading
            if phase is not None:
                limits = activator.server_limits
                limit_s = limits.header_timeout_s if phase == "header" else limits.body_timeout_s
                self._timer = self.loop.call_later(limit_s, self._expired, phase, limit_s)

        def _expired(self, phase: str, limit_s: float) -> None:
            self._timer = None
            if self.transport is None or self.transport.is_closing():
                return
            cycle = self.cycle if phase == "body" else None
            if cycle is not None and cycle.response_started:
                self.transport.close()  # answered already (e.g. 413 before the body): just close
                return
            if cycle is not None:
                cycle.scope[CLIENT_TIMEOUT_KEY] = phase  # type: ignore[literal-required]
            self.transport.write(_timeout_answer(phase, limit_s))
            self.transport.close()
            activator.client_timed_out(phase)

    return FrontDoorProtocol


async def serve(
    activator: Activator,
    host: str,
    port: int,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    graceful_s: int = 30,
) -> None:
    """Serve until ``stop`` is set or the task is cancelled, then shut down gracefully: stop
    accepting, answer buffered requests 503 with ``Retry-After`` (:meth:`Activator.drain`), let
    requests already at a replica finish for up to ``graceful_s``, and return (or re-raise the
    cancellation). ``started`` is set once listening. uvicorn picks uvloop and httptools when
    they are installed (they are dependencies)."""
    config = uvicorn.Config(
        activator.asgi_app,
        host=host,
        port=port,
        http=_http_protocol(activator),
        ws="none",
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=graceful_s,
        timeout_keep_alive=int(activator.server_limits.keepalive_timeout_s),
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    await activator.start()
    running = asyncio.ensure_future(server.serve())
    try:
        while not server.started and not running.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.02)
        if started is not None and server.started:
            started.set()
        waiters: list[asyncio.Future[Any]] = [running]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters[1:]:
                w.cancel()
    finally:
        activator.drain()
        server.should_exit = True
        # Shielded: a cancellation of serve() still waits for the graceful shutdown to end.
        await asyncio.shield(running)
