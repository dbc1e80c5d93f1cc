"""Serving the activator with uvicorn on one address, lean (no access log, no lifespan, no proxy
headers, no websockets, no signal handlers of its own: the caller owns SIGINT/SIGTERM and sets
``stop`` or cancels), and shutting it down gracefully.

On httptools, each connection's writes made in one event-loop iteration leave in one ``write``
syscall: uvicorn writes a response's head and its body separately, and on loopback a syscall per
write is a large part of what a proxied request costs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn

from activator.core import Activator

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


def _http_protocol() -> Any:
    """uvicorn's httptools protocol with coalesced writes, or uvicorn's choice without httptools."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            wrapped = _CoalescingTransport(transport, self.loop)
            super().connection_made(wrapped)  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol


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
        http=_http_protocol(),
        ws="none",
        proxy_headers=False,
        server_header=False,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=graceful_s,
        timeout_keep_alive=30,
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
