"""Serving the activator with uvicorn on one address, lean: no access log, no lifespan, no
signal handlers of its own (the caller owns SIGINT/SIGTERM and sets ``stop``)."""

from __future__ import annotations

import asyncio
import contextlib

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
    """Serve until ``stop`` is set (or the task is cancelled), then stop accepting, let in-flight
    requests finish for up to ``graceful_s``, and return. ``started`` is set once listening."""
    config = uvicorn.Config(
        activator,
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

    async def watch() -> None:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.02)
        if started is not None:
            started.set()
        if stop is not None:
            await stop.wait()
            server.should_exit = True

    watcher = asyncio.ensure_future(watch())
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
