"""Serving the activator with uvicorn on one address, lean (no access log, no lifespan, no signal
handlers of its own: the caller owns SIGINT/SIGTERM and sets ``stop`` or cancels), and shutting
it down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn

from activator.core import Activator


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
