"""The emulator's HTTP surface, in process: error shapes, response and chunk shapes, loading.

The app runs with its lifespan (its scheduler task) inside Starlette's TestClient; the timing,
load and sleep behaviour are tested against a real process in test_emulator_process.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from engine.emulator.app import build_app
from engine.emulator.config import EmulatorConfig
from kernel.clock import SystemClock

FAST = {
    "load_time_s": 0.0,
    "decode_base_s": 0.001,
    "decode_per_seq_s": 0.0,
    "max_model_len_tokens": 256,
    "kv_capacity_tokens": 1024,
    "served_model_name": ("m", "m-alias"),
    "default_max_tokens": 5,
}


def _client(**overrides: Any) -> TestClient:
    config = EmulatorConfig(**{**FAST, **overrides})
    return TestClient(build_app(config, SystemClock()), raise_server_exceptions=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with _client() as c:
        yield c


def _assert_error(resp: Any, status: int, err_type: str, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == err_type
    assert body["error"]["param"] == param
    assert body["error"]["code"] == status
    assert body["error"]["message"]
    return str(body["error"]["message"])


LONG = "x" * 4 * 300  # 300 tokens > max_model_len_tokens 256


@pytest.mark.parametrize(
    ("path", "body", "status", "err_type", "param", "in_message"),
    [
        ("/v1/completions", b"{not json", 400, "BadRequestError", None, "not valid JSON"),
        ("/v1/chat/completions", b"", 400, "BadRequestError", None, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "BadRequestError", None, "must be a JSON object"),
        ("/v1/completions", {"prompt": "hi"}, 400, "BadRequestError", "model", "required"),
        ("/v1/chat/completions", {"messages": []}, 400, "BadRequestError", "model", "m, m-alias"),
        ("/v1/completions", {"model": 7, "prompt": "hi"}, 400, "BadRequestError", "model", "7"),
        ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "NotFoundError", "model",
         "`nope` does not exist"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
         404, "NotFoundError", "model", "gpt-4"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": -1}, 400,
         "BadRequestError", "max_tokens", "max_tokens = -1"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 0}, 400,
         "BadRequestError", "max_tokens", "max_tokens = 0"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2.5}, 400,
         "BadRequestError", "max_tokens", "2.5"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": "5"}, 400,
         "BadRequestError", "max_tokens", "'5'"),
        ("/v1/completions", {"model": "m", "prompt": LONG}, 400, "BadRequestError", "prompt",
         "maximum context length is 256"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 256}, 400,
         "BadRequestError", "max_tokens", "257 tokens (1 in the prompt, 256 in the completion)"),
        ("/v1/chat/completions",
         {"model": "m", "messages": [{"role": "user", "content": LONG}]}, 400,
         "BadRequestError", "messages", "maximum context length"),
        ("/v1/chat/completions", {"model": "m"}, 400, "BadRequestError", "messages", "missing"),
        ("/v1/chat/completions", {"model": "m", "messages": "hi"}, 400, "BadRequestError",
         "messages", "'hi'"),
        ("/v1/completions", {"model": "m"}, 400, "BadRequestError", "prompt", "missing"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "stream": "yes"}, 400,
         "BadRequestError", "stream", "'yes'"),
        ("/v1/completions", {"model": "m", "prompt": "hi", "n": 2}, 400, "BadRequestError", "n",
         "n = 2"),
        ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, 400, "BadRequestError",
         "prompt", "one prompt per request"),
    ],
)  # fmt: skip
def test_bad_input_gets_openai_error_never_500(
    client: TestClient,
    path: str,
    body: bytes | dict[str, Any],
    status: int,
    err_type: str,
    param: str | None,
    in_message: str,
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert in_message in _assert_error(resp, status, err_type, param)


@pytest.mark.parametrize(
    ("method", "path", "status", "err_type", "param"),
    [
        ("POST", "/sleep?level=3", 400, "BadRequestError", "level"),
        ("POST", "/sleep?level=one", 400, "BadRequestError", "level"),
        ("POST", "/sleep?level=1&mode=wait", 400, "BadRequestError", "mode"),
        ("GET", "/v1/nothing-here", 404, "NotFoundError", None),
        ("GET", "/v1/completions", 405, "MethodNotAllowedError", None),
    ],
)
def test_bad_routes_and_params(
    client: TestClient, method: str, path: str, status: int, err_type: str, param: str | None
) -> None:
    _assert_error(client.request(method, path), status, err_type, param)


def test_models_version_and_sleep_flag(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["m", "m-alias"]
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["max_model_len"] == 256
    assert client.get("/version").json()["version"]
    assert client.get("/is_sleeping").json() == {"is_sleeping": False}
    assert client.get("/health").status_code == 200


def test_completion_shape_usage_and_deterministic_text(client: TestClient) -> None:
    req = {"model": "m-alias", "prompt": "hello world!", "max_tokens": 7}
    a = client.post("/v1/completions", json=req).json()
    b = client.post("/v1/completions", json=req).json()
    assert a["id"].startswith("cmpl-") and a["object"] == "text_completion"
    assert a["model"] == "m-alias"
    (choice,) = a["choices"]
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert len(choice["text"].split()) == 7
    assert a["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 7,
        "total_tokens": 10,
        "prompt_tokens_details": None,
    }
    assert b["choices"][0]["text"] == choice["text"]
    other = client.post("/v1/completions", json={**req, "seed": 5}).json()
    assert other["choices"][0]["text"] != choice["text"]
    default = client.post("/v1/completions", json={"model": "m", "prompt": [1, 2, 3]}).json()
    assert default["usage"]["prompt_tokens"] == 3
    assert default["usage"]["completion_tokens"] == 16  # vLLM's completions default


def test_chat_without_max_tokens_stops_naturally(client: TestClient) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    body = client.post("/v1/chat/completions", json={"model": "m", "messages": msgs}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5  # default_max_tokens
    assert body["usage"]["completion_tokens"] == 5
    limited = client.post(
        "/v1/chat/completions", json={"model": "m", "messages": msgs, "max_completion_tokens": 2}
    ).json()
    assert limited["choices"][0]["finish_reason"] == "length"
    assert limited["usage"]["completion_tokens"] == 2


def _events(client: TestClient, path: str, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    frames = [f for f in text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-1]]


def test_completion_stream_chunks(client: TestClient) -> None:
    chunks = _events(
        client,
        "/v1/completions",
        {
            "model": "m",
            "prompt": "abcd",
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    *tokens, last = chunks
    assert len(tokens) == 4
    assert len({c["id"] for c in chunks}) == 1
    for i, c in enumerate(tokens):
        assert c["object"] == "text_completion"
        (choice,) = c["choices"]
        assert choice["text"].strip()
        assert choice["finish_reason"] == ("length" if i == 3 else None)
        assert "usage" not in c
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 4 and last["usage"]["prompt_tokens"] == 1
    plain = client.post("/v1/completions", json={"model": "m", "prompt": "abcd", "max_tokens": 4})
    assert "".join(c["choices"][0]["text"] for c in tokens) == plain.json()["choices"][0]["text"]


def test_chat_stream_chunks(client: TestClient) -> None:
    chunks = _events(
        client,
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 3,
            "stream": True,
        },
    )
    role, *tokens = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(tokens) == 3  # no usage chunk without stream_options.include_usage
    for i, c in enumerate(tokens):
        assert c["object"] == "chat.completion.chunk"
        (choice,) = c["choices"]
        assert set(choice["delta"]) == {"content"}
        assert choice["finish_reason"] == ("length" if i == 2 else None)
    continuous = _events(
        client,
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    assert [c["usage"]["completion_tokens"] for c in continuous] == [0, 1, 2, 2]


def test_loading_engine_answers_503() -> None:
    with _client(load_time_s=3600.0) as c:
        assert c.get("/health").status_code == 503
        resp = c.post("/v1/completions", json={"model": "m", "prompt": "hi"})
        assert "loading" in _assert_error(resp, 503, "ServiceUnavailableError", None)
        assert c.get("/metrics").status_code == 200
