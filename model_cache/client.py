"""An asyncio HTTP client for a node's cache agent (``thaw cache serve``), for the local actuator,
the warm pool and placement: ensure (optionally pinned), list holdings, pin, unpin.

Owns only the wire: JSON in and out (:mod:`model_cache.types`), and the agent's OpenAI-shaped
errors turned back into :class:`AgentError` (status, code, param and message kept).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from model_cache.errors import CacheError
from model_cache.types import (
    CachedModel,
    EnsureResult,
    cached_model_from_json,
    ensure_result_from_json,
)


class AgentError(CacheError):
    """The agent answered an error, or could not be reached (status 0, code ``unreachable``)."""

    def __init__(
        self, message: str, status: int, code: str | None, param: str | None, type_: str
    ) -> None:
        super().__init__(message, param)
        self.status = status
        self.code = code or "agent_error"
        self.type = type_


class CacheAgentClient:
    """Calls one agent at ``base_url`` (e.g. ``http://127.0.0.1:8070``) over ``session``."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def ensure(
        self,
        name: str,
        s3_uri: str | None = None,
        revision: str | None = None,
        pin: bool = False,
        refresh: bool = False,
        timeout_s: float = 3600.0,
    ) -> EnsureResult:
        body: dict[str, Any] = {"pin": pin, "refresh": refresh}
        if s3_uri is not None:
            body["s3_uri"] = s3_uri
        if revision is not None:
            body["revision"] = revision
        data = await self._call("POST", f"/v1/models/{name}/ensure", body, timeout_s)
        return ensure_result_from_json(data)

    async def models(self) -> list[CachedModel]:
        data = await self._call("GET", "/v1/models", None, 30.0)
        return [cached_model_from_json(m) for m in data["data"]]

    async def holds(self, name: str) -> list[CachedModel]:
        """The ready revisions of ``name`` on this node, most recently used first."""
        found = [m for m in await self.models() if m.name == name and m.state == "ready"]
        return sorted(found, key=lambda m: -m.last_used_s)

    async def pin(self, name: str, revision: str | None = None) -> CachedModel:
        body = {"revision": revision} if revision else {}
        return cached_model_from_json(
            await self._call("POST", f"/v1/models/{name}/pin", body, 30.0)
        )

    async def unpin(self, name: str, revision: str | None = None) -> CachedModel:
        body = {"revision": revision} if revision else {}
        return cached_model_from_json(
            await self._call("POST", f"/v1/models/{name}/unpin", body, 30.0)
        )

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                data: Any = await resp.json(content_type=None)
                if resp.status != 200:
                    err = data.get("error", {}) if isinstance(data, dict) else {}
                    raise AgentError(
                        f"{method} {url}: {err.get('message', data)}",
                        resp.status,
                        err.get("code"),
                        err.get("param"),
                        err.get("type", "server_error"),
                    )
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise AgentError(
                f"{method} {url}: {type(e).__name__}: {e}", 0, "unreachable", None, "server_error"
            ) from e
        if not isinstance(data, dict):
            raise AgentError(f"{method} {url}: not a JSON object", 0, "bad_answer", None, "x")
        return data
