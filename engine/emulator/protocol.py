"""The OpenAI/vLLM wire format of the emulator: request validation and response shapes.

Pure: bytes in, a :class:`GenerationRequest` or an :class:`ApiError` out; plain dicts for every
response body and SSE chunk, shaped like vLLM's (``cmpl-``/``chatcmpl-`` ids, ``usage``,
``finish_reason``/``stop_reason``, a last usage chunk with empty ``choices`` under
``stream_options.include_usage``). Errors carry the OpenAI shape
``{"error": {"message", "type", "param", "code"}}`` with vLLM's types and status codes.

Deviation from vLLM, on purpose: a request without ``model`` is refused (400); vLLM serves it with
the default model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from engine.perf_model import EnginePerf, estimate_tokens

Endpoint = Literal["completions", "chat"]

#: Completions default to 16 output tokens when ``max_tokens`` is absent, as in vLLM.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_FILLER = (
    "the of and to in is that it was for on are as with his they at be this from have or by one "
    "had not but what all were when we there can an your which their said if do will each about "
    "how up out them then she many some so these would other into has more her two like him see "
    "time could no make than first been its who now people my made over did down only way find "
    "use may water long little very after words called just where most know"
).split()


class ApiError(Exception):
    """A request the server refuses; ``body()`` is the OpenAI error object."""

    def __init__(
        self, status: int, message: str, *, err_type: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or _DEFAULT_TYPES.get(status, "BadRequestError")
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.err_type, self.param)


_DEFAULT_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, err_type: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def _json_integer(value: Any) -> Any:
    """JSON's integers: ``46`` and ``46.0`` (vLLM's pydantic accepts both); not ``46.5``, not
    ``"46"``, not ``true`` (left to the strict int below to refuse)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer as JSON Schema and vLLM take it (a float with no fraction is one).
JsonInt = Annotated[StrictInt, BeforeValidator(_json_integer)]


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr
    stream: StrictBool = False
    stream_options: _StreamOptions | None = None
    max_tokens: JsonInt | None = Field(None, ge=1)
    n: JsonInt = Field(1, ge=1, le=1)
    seed: JsonInt | None = None


class _Completion(_Common):
    prompt: StrictStr | list[StrictStr] | list[JsonInt] | list[list[JsonInt]]


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[_ContentPart] | None = None


class _Chat(_Common):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: JsonInt | None = Field(None, ge=1)
    add_generation_prompt: StrictBool = True


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, ready for the engine."""

    kind: Endpoint
    model: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    natural_stop: bool
    """``True`` when the client set no limit: ending is a ``stop``, not a ``length``."""
    stream: bool
    include_usage: bool
    continuous_usage: bool
    seed: int | None

    @property
    def finish_reason(self) -> Literal["stop", "length"]:
        return "stop" if self.natural_stop else "length"


def parse_request(
    kind: Endpoint,
    raw: bytes,
    served_models: Sequence[str],
    perf: EnginePerf,
    default_max_tokens: int,
) -> GenerationRequest:
    """Validate one request body; raise :class:`ApiError` (400 or 404) naming what is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ApiError(
            400, f"the request body is a JSON {type(data).__name__}, must be a JSON object"
        )
    if "model" not in data:
        raise ApiError(
            400,
            f"`model` is required; this server serves {', '.join(served_models)}",
            param="model",
        )
    schema: type[_Common] = _Completion if kind == "completions" else _Chat
    try:
        req = schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        shown = "missing" if first["type"] == "missing" else repr(first.get("input"))
        raise ApiError(400, f"{loc} = {shown}: {first['msg']}", param=str(first["loc"][0])) from e
    if req.model not in served_models:
        raise ApiError(
            404,
            f"The model `{req.model}` does not exist. Served here: {', '.join(served_models)}",
            param="model",
        )
    if isinstance(req, _Completion):
        prompt_text, prompt_tokens = _completion_prompt(req)
        limit = req.max_tokens if req.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        natural = False
        prompt_param = "prompt"
    else:
        assert isinstance(req, _Chat)
        prompt_text = flatten_chat(req.messages, req.add_generation_prompt)
        prompt_tokens = estimate_tokens(prompt_text)
        asked = req.max_completion_tokens or req.max_tokens
        natural = asked is None
        limit = asked if asked is not None else default_max_tokens
        prompt_param = "messages"
    room = perf.max_model_len_tokens - prompt_tokens
    if room < 1 or (not natural and limit > room):
        what = "prompt" if kind == "completions" else "messages"
        raise ApiError(
            400,
            f"This model's maximum context length is {perf.max_model_len_tokens} tokens. "
            f"However, you requested {prompt_tokens + limit} tokens ({prompt_tokens} in the "
            f"{what}, {limit} in the completion). Please reduce the length of the {what} "
            f"or completion.",
            param=prompt_param if room < 1 else "max_tokens",
        )
    opts = req.stream_options
    return GenerationRequest(
        kind=kind,
        model=req.model,
        prompt_text=prompt_text,
        prompt_tokens=prompt_tokens,
        max_tokens=min(limit, room),
        natural_stop=natural,
        stream=req.stream,
        include_usage=bool(opts and opts.include_usage),
        continuous_usage=bool(opts and opts.continuous_usage_stats),
        seed=req.seed,
    )


def _completion_prompt(req: _Completion) -> tuple[str, int]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return prompt, estimate_tokens(prompt)
    if not prompt:
        raise ApiError(400, "prompt = []: must hold a prompt", param="prompt")
    first = prompt[0]
    if isinstance(first, int):
        ids = [int(x) for x in prompt if isinstance(x, int)]
        return " ".join(map(str, ids)), len(ids)
    if len(prompt) > 1:
        raise ApiError(
            400,
            f"prompt holds {len(prompt)} prompts; the emulator serves one prompt per request",
            param="prompt",
        )
    if isinstance(first, str):
        return first, estimate_tokens(first)
    return " ".join(map(str, first)), max(len(first), 1)


def flatten_chat(messages: Sequence[_Message], add_generation_prompt: bool) -> str:
    """The prompt a simple chat template would render (its length sets the prompt tokens)."""
    parts = []
    for m in messages:
        if isinstance(m.content, list):
            text = "".join(p.text or "" for p in m.content if p.type == "text")
        else:
            text = m.content or ""
        parts.append(f"<|{m.role}|>\n{text}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


class Filler:
    """Deterministic filler words: the same seed and prompt give the same text."""

    def __init__(self, server_seed: int, prompt_text: str, request_seed: int | None) -> None:
        self._rng = random.Random(f"{server_seed}|{request_seed}|{prompt_text}")

    def next_token(self) -> str:
        return " " + self._rng.choice(_FILLER)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def completion_body(
    request_id: str, created: int, req: GenerationRequest, text: str, n_tokens: int, reason: str
) -> dict[str, Any]:
    if req.kind == "completions":
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj = "text_completion"
    else:
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": req.model,
        "choices": [choice],
        "usage": usage(req.prompt_tokens, n_tokens),
    }


def stream_chunks(
    request_id: str,
    created: int,
    req: GenerationRequest,
    text: str,
    *,
    first: bool,
    finish_reason: str | None,
    n_tokens: int,
) -> list[dict[str, Any]]:
    """The SSE chunks for one token: one, or for a chat stream's first token a role-only chunk
    (``{"role": "assistant", "content": ""}``, as vLLM sends) followed by the token's."""
    out: list[dict[str, Any]] = []
    if req.kind == "chat" and first:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        out.append(_chunk(request_id, created, req, {**role, "finish_reason": None}, 0))
    if req.kind == "completions":
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
    else:
        choice = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = None
    out.append(_chunk(request_id, created, req, choice, n_tokens))
    return out


def _chunk(
    request_id: str, created: int, req: GenerationRequest, choice: dict[str, Any], n_tokens: int
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion" if req.kind == "completions" else "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "choices": [choice],
    }
    if req.continuous_usage:
        chunk["usage"] = usage(req.prompt_tokens, n_tokens)
    return chunk


def usage_chunk(
    request_id: str, created: int, req: GenerationRequest, n_tokens: int
) -> dict[str, Any]:
    """The last chunk under ``stream_options.include_usage``: no choices, the totals."""
    return {
        "id": request_id,
        "object": "text_completion" if req.kind == "completions" else "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "choices": [],
        "usage": usage(req.prompt_tokens, n_tokens),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event line pair: ``data: ...`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def models_body(served_models: Sequence[str], created: int, max_model_len: int) -> dict[str, Any]:
    """``GET /v1/models`` in vLLM's shape."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{name}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in served_models
        ],
    }
