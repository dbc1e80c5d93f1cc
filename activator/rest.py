"""The activator's FastAPI side: everything off the hot path (``/v1/models``, ``/health``,
``/metrics``) and the OpenAPI document, which also describes the two proxied endpoints (their
requests are served by the hot path in :mod:`activator.core`, never by these handlers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from fastapi import FastAPI
from fastapi.requests import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException


class ActivatorView(Protocol):
    """What the REST handlers read of the activator (:class:`activator.core.Activator`)."""

    registry: CollectorRegistry

    def models(self) -> Iterable[str]: ...

    def ready_count(self, model: str) -> int: ...

    def buffered(self, model: str) -> int: ...


class ChatRequest(BaseModel):
    """Any OpenAI chat completion request; forwarded to a replica byte for byte."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The configured model to route to.")
    messages: list[dict[str, Any]] = Field(description="The conversation, as in OpenAI's API.")


class CompletionRequest(BaseModel):
    """Any OpenAI completion request; forwarded to a replica byte for byte."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="The configured model to route to.")
    prompt: str | list[Any] = Field(description="The prompt, as in OpenAI's API.")


class ModelCard(BaseModel):
    id: str = Field(description="The model's OpenAI name.")
    object: str = Field(default="model", description="Always 'model'.")
    owned_by: str = Field(default="thaw", description="Always 'thaw'.")
    ready_replicas: int = Field(description="Ready replicas now (0: scaled to zero).")
    buffered_requests: int = Field(description="Requests waiting for a replica now.")


class ModelList(BaseModel):
    object: str = Field(default="list", description="Always 'list'.")
    data: list[ModelCard] = Field(description="Every configured model, scaled to zero or not.")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return JSONResponse(
        {
            "error": {
                "message": str(detail),
                "type": "invalid_request_error",
                "param": None,
                "code": status,
            }
        },
        status_code=status,
    )


def build_rest_app(activator: ActivatorView) -> FastAPI:
    """The FastAPI app mounted behind the activator's hot path."""
    app = FastAPI(
        title="Thaw activator",
        description="OpenAI-compatible front door: routes by `model`, buffers at zero replicas.",
        version="1",
    )
    app.add_exception_handler(HTTPException, _http_error)

    @app.post("/v1/chat/completions", summary="Chat completion (proxied, SSE when stream=true)")
    async def chat(body: ChatRequest) -> dict[str, Any]:  # pragma: no cover - the hot path serves
        raise HTTPException(500, "served by the activator's hot path")

    @app.post("/v1/completions", summary="Completion (proxied, SSE when stream=true)")
    async def completions(body: CompletionRequest) -> dict[str, Any]:  # pragma: no cover
        raise HTTPException(500, "served by the activator's hot path")

    @app.get("/v1/models", summary="Every configured model, scaled to zero or not")
    async def models() -> ModelList:
        return ModelList(
            data=[
                ModelCard(
                    id=name,
                    ready_replicas=activator.ready_count(name),
                    buffered_requests=activator.buffered(name),
                )
                for name in activator.models()
            ]
        )

    @app.get("/health", summary="200 while the activator serves")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(activator.registry), media_type=CONTENT_TYPE_LATEST)

    return app
