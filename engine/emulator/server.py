"""Serving the emulator's app with uvicorn until SIGTERM or SIGINT.

Owns the process-level part: the uvicorn server (plain asyncio loop, whose timers are finer than
uvloop's millisecond ones), graceful shutdown (stop accepting, let in-flight requests finish for
up to ``graceful_shutdown_s``, stop the engine) and the exit status (0 after a SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from engine.emulator.app import build_app, hold_gpu
from engine.emulator.config import EmulatorConfig
from engine.emulator.gpu_ledger import GpuLedgerError, GpuOutOfMemory
from kernel.clock import Clock

log = logging.getLogger(__name__)


#: Seconds before the graceful-shutdown deadline at which open requests are aborted, so that their
#: last chunks and ``[DONE]`` still reach the clients before uvicorn cancels what is left.
ABORT_MARGIN_S = 0.5


class _Server(uvicorn.Server):
    """uvicorn, plus: open requests end as aborted just before the graceful deadline."""

    def __init__(self, config: uvicorn.Config, abort_all: Callable[[], None]) -> None:
        super().__init__(config)
        self._abort_all = abort_all

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace_s = self.config.timeout_graceful_shutdown or 0
        timer = asyncio.get_running_loop().call_later(
            max(grace_s - ABORT_MARGIN_S, 0.0), self._abort_all
        )
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def serve(
    config: EmulatorConfig, clock: Clock, started_s: float, credential_file: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if the server could not start.

    ``credential_file``: Thaw's engine guard is on (see :func:`build_app`). An emulated GPU
    without room for this engine: 1 at once, as vLLM exits when the GPU lacks the memory."""
    try:
        ledger = hold_gpu(config)
    except (GpuOutOfMemory, GpuLedgerError) as e:
        log.error("thaw emulator: cannot start: %s", e)
        return 1
    app = build_app(config, clock, started_s, credential_file=credential_file, ledger=ledger)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="asyncio",
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=config.graceful_shutdown_s,
        ),
        app.state.abort_all,
    )
    log.info(
        "thaw emulator serving %s on http://%s:%d (healthy after %.1f s)",
        ", ".join(config.served_model_name),
        config.host,
        config.port,
        config.load_time_s,
    )
    # uvicorn re-raises the signal it caught once it has shut down; with this handler in place
    # that re-raise is a no-op and the process exits 0 after a SIGTERM, as a clean stop should.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1
