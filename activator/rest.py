"""The activator's FastAPI side: everything off the hot path (``/v1/models``, ``/health``,
``/metrics``) and the OpenAPI document, which also describes the two proxied endpoints (their
requests are served by the hot path in :mod:`activator.core`, never by these handlers).

The document is exact enough for a schema-driven fuzzer (schemathesis, in the tests): ``model``
is an enum of the models served now (it follows policy reloads), the request fields an engine
validates are declared with vLLM's types and bounds (others pass through), and every status the
front door answers is listed with its body, plus ``Retry-After`` on 503 and 504."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal, Protocol

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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = Field(False, description="A last chunk with the usage totals.")
    continuous_usage_stats: bool = Field(False, description="Usage in every chunk (vLLM).")


class _Generation(BaseModel):
    """What both endpoints share; fields not listed are forwarded unchanged."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="One of the models served here (see /v1/models).")
    stream: bool = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="With stream: usage chunks.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    n: int = Field(1, ge=1, description="Choices to generate.")
    seed: int | None = Field(None, description="Sampling seed.")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="The part's kind, e.g. text.")
    text: str | None = Field(None, description="The text of a text part.")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(description="system, user, assistant, ...")
    content: str | list[ContentPart] | None = Field(None, description="Text, or parts.")


class ChatRequest(_Generation):
    """Any OpenAI chat completion request; forwarded to a replica byte for byte."""

    messages: list[Message] = Field(min_length=1, description="The conversation.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate (OpenAI's newer name)."
    )
    add_generation_prompt: bool = Field(True, description="vLLM: end with the assistant header.")


class CompletionRequest(_Generation):
    """Any OpenAI completion request; forwarded to a replica byte for byte."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="The prompt: text, texts, token ids, or lists of token ids.",
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}},
                    "minItems": 1,
                },
            ]
        },
    )


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int = Field(description="The choice's position.")
    finish_reason: str | None = Field(None, description="stop, length, ...")


class Completion(BaseModel):
    """A completion or chat completion, as the engine made it (not streamed)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(description="The engine's id of the completion.")
    object: str = Field(description="text_completion or chat.completion.")
    created: int = Field(description="Unix time of the answer.")
    model: str = Field(description="The model that answered.")
    choices: list[Choice] = Field(description="The generated choices.")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, and what to do.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error.")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: int | str | None = Field(description="The HTTP status, or a code name.")


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every error the front door gives."""

    error: ErrorDetail = Field(description="The error.")


#: One server-sent event of a stream (its ``data`` is a JSON chunk, or ``[DONE]`` at the end).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if retry_after:
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer"},
                "required": True,
            }
        }
    return out


#: What the proxied endpoints answer (the engine's own 4xx pass through in the same shape).
PROXIED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Completion,
        "description": "The engine's answer: JSON, or server-sent events when stream is true.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    400: _error(
        "Bad request: not a JSON object, too deeply nested, no valid model, or the "
        "engine refused a field."
    ),
    401: _error("Missing or invalid API key (when keys are required)."),
    404: _error("No such model here."),
    408: _error("The request's headers or body arrived too slowly."),
    413: _error("The body is larger than the model's max_body_bytes."),
    429: _error("The engine asks the client to slow down.", retry_after=True),
    503: _error("The buffer is full, or the front door is shutting down.", retry_after=True),
    504: _error("No replica could take the request in time.", retry_after=True),
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: _error("Missing or invalid API key.")}


class ModelCard(BaseModel):
    id: str = Field(description="The model's OpenAI name.")
    object: str = Field(default="model", description="Always 'model'.")
    owned_by: str = Field(default="thaw", description="Always 'thaw'.")
    ready_replicas: int = Field(description="Ready replicas now (0: scaled to zero).")
    buffered_requests: int = Field(description="Requests waiting for a replica now.")


class Health(BaseModel):
    status: Literal["ok"] = Field(description="Always 'ok' while the front door serves.")


class ModelList(BaseModel):
    object: str = Field(default="list", description="Always 'list'.")
    data: list[ModelCard] = Field(description="Every configured model, scaled to zero or not.")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = exc.headers if isinstance(exc, HTTPException) else None  # e.g. Allow on a 405
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
        headers=headers,
    )


def build_rest_app(activator: ActivatorView) -> FastAPI:
    """The FastAPI app mounted behind the activator's hot path."""
    app = FastAPI(
        title="Thaw activator",
        description="OpenAI-compatible front door: routes by `model`, buffers at zero replicas.",
        version="1",
    )
    app.add_exception_handler(HTTPException, _http_error)

    @app.post(
        "/v1/chat/completions",
        summary="Chat completion (proxied, SSE when stream=true)",
        responses=PROXIED_RESPONSES,
        response_model=None,
    )
    async def chat(body: ChatRequest) -> None:  # pragma: no cover - the hot path serves
        raise HTTPException(500, "served by the activator's hot path")

    @app.post(
        "/v1/completions",
        summary="Completion (proxied, SSE when stream=true)",
        responses=PROXIED_RESPONSES,
        response_model=None,
    )
    async def completions(body: CompletionRequest) -> None:  # pragma: no cover
        raise HTTPException(500, "served by the activator's hot path")

    @app.get(
        "/v1/models",
        summary="Every configured model, scaled to zero or not",
        responses=_UNAUTHORIZED,
    )
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
    async def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(activator.registry), media_type=CONTENT_TYPE_LATEST)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document (built once), with ``model`` an enum of the models served now
        and the 422s FastAPI adds for handlers that never run taken out."""
        doc = copy.deepcopy(base_openapi())
        served = sorted(activator.models())
        for name in ("ChatRequest", "CompletionRequest"):
            props = doc["components"]["schemas"][name]["properties"]
            props["model"]["enum"] = served
        for path in ("/v1/chat/completions", "/v1/completions"):
            doc["paths"][path]["post"]["responses"].pop("422", None)
        doc["components"]["schemas"].pop("HTTPValidationError", None)
        doc["components"]["schemas"].pop("ValidationError", None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return app
