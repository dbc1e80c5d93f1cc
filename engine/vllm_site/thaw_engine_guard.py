"""Thaw's engine guard: sleep, wake and every other control endpoint of an engine are Thaw's only,
and the engine is not ready for traffic while it sleeps.

An ASGI middleware, standard library only, so that it loads inside the vLLM image, where nothing
of Thaw's is installed:

- **vLLM** loads it with ``--middleware thaw_engine_guard.EngineGuard`` (vLLM adds a class given
  there with ``app.add_middleware``), this file's directory on ``PYTHONPATH``: locally
  :func:`engine.process.vllm_spec` puts :mod:`engine.vllm_site` there; on a cluster ``thaw
  knative render`` has an init container copy this file from Thaw's image into a volume the
  engine container puts on its ``PYTHONPATH``.
- **thaw emulator** wraps its app in the same class when the same switch is set.

The switch is :data:`CREDENTIAL_FILE_ENV`: the path of a file that holds Thaw's credential (on a
cluster, a key of the Kubernetes Secret ``thaw-engine-credential`` mounted into the engine pod and
into Thaw's controller; under ``thaw up``, a file the stack writes for its own engines). Then:

- A request for a **control path** (:func:`is_control_path`: vLLM's dev endpoints ``/sleep``,
  ``/wake_up``, ``/is_sleeping``, ``/collective_rpc``, ``/reset_prefix_cache`` and the rest,
  the RL weight-update and pause endpoints, the profiler, runtime LoRA loading, elastic EP
  scaling, fault tolerance) is answered 403 in the OpenAI error shape unless its
  :data:`CREDENTIAL_HEADER` equals the file's content (compared in constant time; the file is
  read at each such request, so a rotated Secret takes effect without a restart). A missing,
  unreadable or empty file refuses every control request (fail closed). The public route (the
  gateway, Knative's activator and queue-proxy) never sets that header: a client cannot sleep,
  wake or reconfigure an engine through it.
- ``GET`` :data:`READY_PATH` is the readiness probe: 200 when the engine's own ``/health``
  answers 200 and it is awake (its ``/is_sleeping`` does not say true, and no ``/sleep`` is in
  flight through this guard), else 503 with the reason. Knative's queue-proxy probes it, so a
  sleeping pod leaves its revision's ready endpoints (and the PodAutoscaler's actual scale) by
  itself, and a woken one comes back. ``/health`` keeps vLLM's meaning (the process is alive),
  so nothing that restarts unhealthy engines ever restarts a sleeping one.
- Everything else passes through untouched (streams included).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The environment variable that turns the guard on: the path of the credential file.
CREDENTIAL_FILE_ENV = "THAW_ENGINE_CREDENTIAL_FILE"
#: The request header that carries Thaw's credential (lower case, as ASGI spells headers).
CREDENTIAL_HEADER = "thaw-engine-credential"
#: The readiness path: 200 only while the engine is healthy and awake.
READY_PATH = "/thaw/ready"
#: This module's name for vLLM's ``--middleware`` (with this directory on ``PYTHONPATH``).
VLLM_MIDDLEWARE = "thaw_engine_guard.EngineGuard"

#: Control paths, exactly (after trailing slashes are dropped). vLLM 0.32's dev endpoints
#: (``VLLM_SERVER_DEV_MODE=1``: vllm/entrypoints/serve/dev/ and the RL routers) and the other
#: endpoints that change an engine rather than ask it to generate.
CONTROL_PATHS: frozenset[str] = frozenset(
    {
        # sleep mode
        "/sleep",
        "/wake_up",
        "/is_sleeping",
        "/release_kv_cache_memory",
        # caches and RPC
        "/collective_rpc",
        "/reset_prefix_cache",
        "/reset_mm_cache",
        "/reset_encoder_cache",
        "/server_info",
        # RL: pause, weight transfer and updates
        "/pause",
        "/resume",
        "/is_paused",
        "/abort_requests",
        "/init_weight_transfer_engine",
        "/shutdown_weight_transfer_engine",
        "/start_weight_update",
        "/start_draft_weight_update",
        "/update_weights",
        "/finish_weight_update",
        "/update_weight_version",
        "/weight_info",
        "/weight_checker",
        "/get_world_size",
        # the profiler, runtime LoRA loading, elastic expert parallelism
        "/start_profile",
        "/stop_profile",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/scale_elastic_ep",
        "/is_scaling_elastic_ep",
        # aborts any request by id (disaggregated serving): never a client's to call
        "/inference/v1/abort_requests",
    }
)
#: Control path prefixes: whole families.
CONTROL_PREFIXES: tuple[str, ...] = ("/fault_tolerance/",)

log = logging.getLogger("thaw.engine_guard")


def normalize_path(path: str) -> str:
    """``path`` as routing sees it: runs of ``/`` collapsed, a trailing ``/`` dropped."""
    while "//" in path:
        path = path.replace("//", "/")
    return path.rstrip("/") or "/"


def is_control_path(path: str) -> bool:
    """Whether ``path`` is one only Thaw may call."""
    p = normalize_path(path)
    return p in CONTROL_PATHS or any(p.startswith(prefix) for prefix in CONTROL_PREFIXES)


def read_credential(path: str | None) -> bytes | None:
    """The credential in the file at ``path``, surrounding whitespace dropped; None when there
    is no path, the file cannot be read or it is empty."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            value = f.read().strip()
    except OSError:
        return None
    return value or None


def _header(scope: Scope, name: str) -> bytes | None:
    key = name.encode("latin-1")
    for k, v in scope.get("headers", ()):
        if bytes(k).lower() == key:
            return bytes(v)
    return None


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def _error(status: int, message: str, kind: str) -> dict[str, Any]:
    """The OpenAI error shape vLLM answers in."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


class EngineGuard:
    """The middleware; see the module docstring. ``credential_file`` defaults to the environment's
    :data:`CREDENTIAL_FILE_ENV` (vLLM builds the class with the app alone)."""

    def __init__(self, app: ASGIApp, credential_file: str | None = None) -> None:
        self.app = app
        self.credential_file = credential_file or os.environ.get(CREDENTIAL_FILE_ENV) or None
        self._sleeps_in_flight = 0
        if read_credential(self.credential_file) is None:
            log.error(
                "thaw engine guard: no credential (%s = %r is unset, unreadable or empty): every "
                "control request (/sleep, /wake_up, ...) will be refused",
                CREDENTIAL_FILE_ENV,
                self.credential_file,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = self._route_path(scope)
        if normalize_path(path) == READY_PATH and scope.get("method") in ("GET", "HEAD"):
            await self._ready(scope, send)
            return
        if not is_control_path(path):
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _json(
                send,
                403,
                _error(
                    403,
                    f"{scope.get('method')} {normalize_path(path)} is Thaw's only: control "
                    f"requests need Thaw's credential in the {CREDENTIAL_HEADER} header; the "
                    "public route never carries it",
                    "PermissionDenied",
                ),
            )
            return
        if normalize_path(path) != "/sleep":
            await self.app(scope, receive, send)
            return
        self._sleeps_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._sleeps_in_flight -= 1

    @staticmethod
    def _route_path(scope: Scope) -> str:
        path = str(scope.get("path", "/"))
        root = str(scope.get("root_path", "") or "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path

    def _authorized(self, scope: Scope) -> bool:
        expected = read_credential(self.credential_file)
        given = _header(scope, CREDENTIAL_HEADER)
        return expected is not None and given is not None and hmac.compare_digest(given, expected)

    async def _ready(self, scope: Scope, send: Send) -> None:
        if self._sleeps_in_flight:
            await _json(send, 503, {"ready": False, "reason": "going to sleep"})
            return
        status, _ = await self._ask(scope, "/health")
        if status != 200:
            await _json(send, 503, {"ready": False, "reason": f"/health answered {status}"})
            return
        status, body = await self._ask(scope, "/is_sleeping")
        asleep = False
        if status == 200:
            try:
                asleep = bool(json.loads(body or b"{}").get("is_sleeping", False))
            except (ValueError, AttributeError):
                asleep = False
        if asleep:
            await _json(send, 503, {"ready": False, "reason": "asleep"})
            return
        await _json(send, 200, {"ready": True})

    async def _ask(self, scope: Scope, path: str) -> tuple[int, bytes]:
        """GET ``path`` of the wrapped app in-process; its status and body."""
        import asyncio  # here: importing this module (render reads its names) starts no loop

        sub: Scope = {
            **scope,
            "method": "GET",
            "path": str(scope.get("root_path", "") or "") + path,
            "raw_path": (str(scope.get("root_path", "") or "") + path).encode(),
            "query_string": b"",
            "headers": [],
        }
        done = asyncio.Event()
        sent_request = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(sub, receive, capture)
        finally:
            done.set()
        return status, b"".join(chunks)
