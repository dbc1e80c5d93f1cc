"""The node agent: the model cache over HTTP (FastAPI), for the warm pool, the local actuator and
placement on this node.

Routes::

    POST /v1/models/{name}/ensure   {"s3_uri"?, "revision"?, "pin"?, "refresh"?} -> where the
                                    model is on disk, tier "hit" (was there) or "miss" (pulled);
                                    concurrent ensures of one model share one pull
    GET  /v1/models                 every revision held: name, revision, path, size_bytes,
                                    last_used (unix s), pins, pinned, state (ready|pulling|partial)
    GET  /v1/models/{name}          the revisions of one model (404 if none)
    POST /v1/models/{name}/pin      {"revision"?} one more pin (a pinned revision is never evicted)
    POST /v1/models/{name}/unpin    {"revision"?} one pin fewer
    GET  /health                    200 {"status": "ok"}
    GET  /metrics                   Prometheus text (model_cache.metrics), this app's own registry

Errors leave as ``{"error": {"message", "type", "param", "code"}}`` with the status of the
:mod:`model_cache.errors` class. Owns the HTTP surface and the process (uvicorn, SIGTERM); the
cache itself is :class:`model_cache.cache.ModelCache`, started and closed by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kernel.clock import Clock
from model_cache.cache import ModelCache
from model_cache.errors import CacheError, NotCachedError
from model_cache.puller import PullConfig
from model_cache.s3 import S3Client, S3Settings, parse_s3_uri
from model_cache.store import Store
from model_cache.types import cached_model_to_json, ensure_result_to_json

log = logging.getLogger(__name__)


class AgentSettings(BaseModel):
    """Everything ``thaw cache serve`` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path = Field(description="the cache directory (created if missing)")
    budget_bytes: int = Field(ge=0, description="most bytes of model files the cache may hold")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8070, ge=0, le=65535, description="TCP port to listen on")
    s3: S3Settings = Field(default_factory=S3Settings, description="how to reach S3")
    s3_prefix: str | None = Field(
        default=None,
        description="where models live when an ensure names no s3_uri: s3://BUCKET/PREFIX, "
        "model NAME at s3://BUCKET/PREFIX/NAME",
    )
    pull: PullConfig = Field(default_factory=PullConfig, description="how pulls fetch")
    max_concurrent_pulls: int = Field(
        default=4, ge=1, le=64, description="pulls of different models running at once"
    )


class EnsureBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    s3_uri: str | None = Field(
        default=None, description="s3://BUCKET/PREFIX where `thaw cache push` put the model"
    )
    revision: str | None = Field(default=None, description="the revision wanted (64 hex digits)")
    pin: bool = Field(default=False, description="pin the model, atomically with the ensure")
    refresh: bool = Field(
        default=False,
        description="ask S3 for the newest revision even when one is on disk (default: a "
        "cached revision is served without any S3 request)",
    )


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: str | None = Field(
        default=None, description="the revision (default: the most recently used one)"
    )


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def build_app(cache: ModelCache) -> FastAPI:
    """The agent's app; the cache starts and closes with the ASGI lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(cache.start)
        try:
            yield
        finally:
            await asyncio.to_thread(cache.close)

    app = FastAPI(title="thaw model cache agent", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(CacheError)
    async def cache_error(request: Request, exc: CacheError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        message = f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}"
        return JSONResponse(error_body(message, "server_error", None, "internal_error"), 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'} = "
            f"{e.get('input')!r}: {e.get('msg')}"
            for e in errors
        )
        return JSONResponse(error_body(msg, "invalid_request_error", param, "invalid_value"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(
            error_body(message, "invalid_request_error", None, code), exc.status_code
        )

    @app.post("/v1/models/{name}/ensure")
    async def ensure(name: str, body: EnsureBody | None = None) -> dict[str, Any]:
        b = body or EnsureBody()
        fut = cache.ensure_future(name, b.s3_uri, b.revision, b.pin, refresh=b.refresh)
        return ensure_result_to_json(await asyncio.wrap_future(fut))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "budget_bytes": cache.budget_bytes,
            "used_bytes": cache.used_bytes(),
            "data": [cached_model_to_json(m) for m in cache.models()],
        }

    @app.get("/v1/models/{name}")
    async def one_model(name: str) -> dict[str, Any]:
        found = [cached_model_to_json(m) for m in cache.models() if m.name == name]
        if not found:
            raise NotCachedError(f"model {name!r} is not on this node", param="name")
        return {"object": "list", "data": found}

    @app.post("/v1/models/{name}/pin")
    async def pin(name: str, body: PinBody | None = None) -> dict[str, Any]:
        return cached_model_to_json(cache.pin(name, (body or PinBody()).revision))

    @app.post("/v1/models/{name}/unpin")
    async def unpin(name: str, body: PinBody | None = None) -> dict[str, Any]:
        return cached_model_to_json(cache.unpin(name, (body or PinBody()).revision))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(cache.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def open_cache(settings: AgentSettings, clock: Clock) -> ModelCache:
    """The cache the settings describe (store opened and locked; not started)."""
    source = parse_s3_uri(settings.s3_prefix, "s3_prefix") if settings.s3_prefix else None
    store = Store.open(settings.dir)
    return ModelCache(
        store,
        S3Client(settings.s3),
        clock,
        budget_bytes=settings.budget_bytes,
        pull=settings.pull,
        default_source=source,
        registry=CollectorRegistry(),
        max_concurrent_pulls=settings.max_concurrent_pulls,
    )


def serve(settings: AgentSettings, clock: Clock) -> int:
    """Run the agent until SIGTERM/SIGINT; 0 after a clean stop."""
    cache = open_cache(settings, clock)
    try:
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(cache),
                host=settings.host,
                port=settings.port,
                lifespan="on",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )
        log.info(
            "thaw cache agent: %s (budget %d bytes) on http://%s:%d",
            settings.dir,
            settings.budget_bytes,
            settings.host,
            settings.port,
        )
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        cache.store.close()
    return 0 if server.started else 1
