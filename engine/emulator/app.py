"""The emulator's ASGI app (Starlette): vLLM's OpenAI HTTP surface over :class:`EmulatedEngine`.

Owns the routes and their HTTP behaviour; validation and body shapes live in
:mod:`engine.emulator.protocol`, timing in :mod:`engine.emulator.engine`.

Loading: the server listens at once but ``/health`` answers 503 until ``load_time_s`` has passed
since ``started_s`` (the process start), and so do the generation, sleep and wake routes (real vLLM
does not listen at all while it loads; a 503 is what a client sees from a proxy in front of it).
``/metrics``, ``/version`` and ``/is_sleeping`` answer throughout.

An emulated GPU (``gpu_id``): the engine takes its awake memory in the GPU's ledger
(:mod:`engine.emulator.gpu_ledger`) when the app starts (no room: the start fails, as vLLM's does),
gives it back once asleep, takes it again before a wake (no room: 500, still asleep) and gives it
back at shutdown. With a ``credential_file``, Thaw's engine guard
(:mod:`engine.vllm_site.thaw_engine_guard`) wraps the app, as ``--middleware`` wraps vLLM's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.emulator.config import EmulatorConfig
from engine.emulator.engine import EmulatedEngine, PauseMode, TokenEvent
from engine.emulator.gpu_ledger import GpuLedger, GpuOutOfMemory
from engine.emulator.metrics import EmulatorMetrics
from engine.emulator.protocol import (
    ApiError,
    Endpoint,
    Filler,
    GenerationRequest,
    completion_body,
    error_body,
    models_body,
    parse_request,
    sse,
    stream_chunks,
    usage_chunk,
)
from engine.perf_model import AdmissionError, SleepLevel
from engine.vllm_site.thaw_engine_guard import EngineGuard
from kernel.clock import Clock

log = logging.getLogger(__name__)

#: The vLLM release whose API and metric names the emulator follows (``GET /version``).
VLLM_API_VERSION = "0.32.0"

_PAUSE_MODES: tuple[PauseMode, ...] = ("keep", "abort")
#: What ``/collective_rpc`` knows: vLLM's way back from sleep level 2 with the weights on disk
#: (wake_up, collective_rpc reload_weights, reset_prefix_cache); nothing to do here.
_RPC_METHODS: tuple[str, ...] = ("reload_weights",)


@dataclass
class _AppState:
    """What the routes share; one per app."""

    config: EmulatorConfig
    clock: Clock
    ready_at_s: float
    created: int
    metrics: EmulatorMetrics
    engine: EmulatedEngine | None = None
    ledger: GpuLedger | None = None

    def loaded(self) -> bool:
        return self.clock.monotonic() >= self.ready_at_s

    def running_engine(self) -> EmulatedEngine:
        if not self.loaded():
            left = self.ready_at_s - self.clock.monotonic()
            raise ApiError(503, f"the engine is still loading ({left:.1f} s left)")
        if self.engine is None:
            raise ApiError(503, "the engine is not running (server starting or stopping)")
        return self.engine


def build_app(
    config: EmulatorConfig,
    clock: Clock,
    started_s: float | None = None,
    *,
    credential_file: str | None = None,
    ledger: GpuLedger | None = None,
) -> Starlette:
    """The app; its engine starts and stops with the ASGI lifespan.

    ``started_s`` is when the process started, on ``clock.monotonic()`` (default: now); ``/health``
    turns 200 ``load_time_s`` after it. ``app.state.abort_all()`` ends every open request as
    aborted (the server calls it as the graceful-shutdown time runs out, so that streams end with
    ``[DONE]`` rather than being cut). ``credential_file``: Thaw's engine guard is on, with the
    credential in that file. ``ledger``: the emulated GPU's ledger, its awake memory already
    held (:func:`hold_gpu`); without it, an emulated GPU's memory is taken when the app starts.
    """
    start = clock.monotonic() if started_s is None else started_s
    srv = _AppState(
        config=config,
        clock=clock,
        ready_at_s=start + config.load_time_s,
        created=int(clock.wall()),
        metrics=EmulatorMetrics(config.served_model_name[0]),
        ledger=ledger,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if srv.ledger is None:
            srv.ledger = hold_gpu(config)
        engine = EmulatedEngine(config.perf(), clock, srv.metrics)
        await engine.start()
        srv.engine = engine
        try:
            yield
        finally:
            srv.engine = None
            await engine.stop()
            if srv.ledger is not None:
                srv.ledger.release()

    async def health(request: Request) -> Response:
        if not srv.loaded() or srv.engine is None:
            return Response(status_code=503)
        return Response(status_code=200)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VLLM_API_VERSION, "server": "thaw emulator"})

    async def models(request: Request) -> Response:
        srv.running_engine()
        return JSONResponse(
            models_body(config.served_model_name, srv.created, config.max_model_len_tokens)
        )

    async def metrics(request: Request) -> Response:
        engine = srv.engine
        body = srv.metrics.render(engine.state() if engine is not None else None)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def is_sleeping(request: Request) -> Response:
        engine = srv.engine
        return JSONResponse({"is_sleeping": engine is not None and engine.state().sleep_level > 0})

    async def sleep(request: Request) -> Response:
        engine = srv.running_engine()
        level = _sleep_level(request.query_params.get("level", "1"))
        mode = request.query_params.get("mode", "keep")
        if mode not in _PAUSE_MODES:
            raise ApiError(
                400, f"mode = {mode!r}, must be one of {', '.join(_PAUSE_MODES)}", param="mode"
            )
        await engine.sleep(level, "abort" if mode == "abort" else "keep")
        if srv.ledger is not None:
            srv.ledger.hold(0, "sleep")
        return JSONResponse({"status": "sleeping", "level": level})

    async def wake_up(request: Request) -> Response:
        engine = srv.running_engine()
        if srv.ledger is not None and engine.state().sleep_level > 0:
            try:
                srv.ledger.hold(
                    config.gpu_awake_bytes, f"the wake of {config.served_model_name[0]}"
                )
            except GpuOutOfMemory as e:
                raise ApiError(500, f"CUDA out of memory (emulated): {e}") from e
        await engine.wake_up()
        tags = request.query_params.getlist("tags") or None
        return JSONResponse({"status": "awake", "tags": tags})

    async def collective_rpc(request: Request) -> Response:
        srv.running_engine()
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as e:
            raise ApiError(400, f"JSON decode error: {e}") from e
        method = body.get("method") if isinstance(body, dict) else None
        if method not in _RPC_METHODS:
            raise ApiError(
                400,
                f"method = {method!r}: the emulator knows {', '.join(_RPC_METHODS)}",
                param="method",
            )
        return JSONResponse({"results": [None]})

    async def reset_prefix_cache(request: Request) -> Response:
        srv.running_engine()
        return Response(status_code=200)

    async def completions(request: Request) -> Response:
        return await _generate(srv, request, "completions")

    async def chat(request: Request) -> Response:
        return await _generate(srv, request, "chat")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/is_sleeping", is_sleeping, methods=["GET"]),
        Route("/sleep", sleep, methods=["POST"]),
        Route("/wake_up", wake_up, methods=["POST"]),
        Route("/collective_rpc", collective_rpc, methods=["POST"]),
        Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    if credential_file is not None:
        app.add_middleware(EngineGuard, credential_file=credential_file)
    app.state.abort_all = lambda: srv.engine.abort_all() if srv.engine is not None else None
    return app


def hold_gpu(config: EmulatorConfig) -> GpuLedger | None:
    """The emulated GPU's ledger with this engine's awake memory held (None: no GPU); raises
    :class:`~engine.emulator.gpu_ledger.GpuOutOfMemory` when it does not fit."""
    if config.gpu_id is None or config.gpu_memory_bytes is None:
        return None
    ledger = GpuLedger(
        Path(config.gpu_ledger_dir or Path(tempfile.gettempdir()) / "thaw-gpu-ledger"),
        config.gpu_id,
        config.gpu_memory_bytes,
        name=config.served_model_name[0],
    )
    ledger.hold(config.gpu_awake_bytes, f"the start of {config.served_model_name[0]}")
    return ledger


def _sleep_level(raw: str) -> SleepLevel:
    if raw == "1":
        return 1
    if raw == "2":
        return 2
    raise ApiError(400, f"level = {raw!r}, must be 1 or 2", param="level")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(500, f"internal error: {exc}", "InternalServerError", None), status_code=500
    )


async def _generate(srv: _AppState, request: Request, kind: Endpoint) -> Response:
    config = srv.config
    req = parse_request(
        kind, await request.body(), config.served_model_name, config, config.default_max_tokens
    )
    engine = srv.running_engine()
    request_id = f"{'cmpl' if kind == 'completions' else 'chatcmpl'}-{uuid.uuid4().hex}"
    created = int(srv.clock.wall())
    try:
        queue = engine.submit(request_id, req.prompt_tokens, req.max_tokens, req.finish_reason)
    except AdmissionError as e:
        raise ApiError(400, str(e), param="max_tokens") from e
    filler = Filler(config.seed, req.prompt_text, req.seed)
    if req.stream:
        return StreamingResponse(
            _stream(engine, request_id, created, req, queue, filler),
            media_type="text/event-stream",
        )
    parts: list[str] = []
    reason: str = "abort"
    try:
        while True:
            event = await queue.get()
            if event.index >= 0:
                parts.append(filler.next_token())
            if event.finish_reason is not None:
                reason = event.finish_reason
                break
    finally:
        engine.cancel(request_id)
    return JSONResponse(
        completion_body(request_id, created, req, "".join(parts), len(parts), reason)
    )


async def _stream(
    engine: EmulatedEngine,
    request_id: str,
    created: int,
    req: GenerationRequest,
    queue: asyncio.Queue[TokenEvent],
    filler: Filler,
) -> AsyncIterator[bytes]:
    n_tokens = 0
    first = True
    try:
        while True:
            event = await queue.get()
            text = ""
            if event.index >= 0:
                n_tokens += 1
                text = filler.next_token()
            for chunk in stream_chunks(
                request_id,
                created,
                req,
                text,
                first=first,
                finish_reason=event.finish_reason,
                n_tokens=n_tokens,
            ):
                yield sse(chunk)
            first = False
            if event.finish_reason is not None:
                break
        if req.include_usage:
            yield sse(usage_chunk(request_id, created, req, n_tokens))
        yield sse("[DONE]")
    finally:
        engine.cancel(request_id)
