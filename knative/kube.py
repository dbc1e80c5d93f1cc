"""A thin async Kubernetes REST client over aiohttp: the controller's only way to the API server.

Owns authentication (kubeconfig or in-cluster service account, both read with the ``kubernetes``
package's loaders, so contexts, exec plugins and token files behave as with kubectl), the few
verbs the controller uses (get, list, watch, create, replace, patch), and the error family:
:class:`KubeError` with :class:`ConflictError` (409) and :class:`NotFoundError` (404) below it,
raised from the API's ``Status`` body. :func:`retry_on_conflict` re-reads and retries a write on
409; :class:`Backoff` spaces retries after other API errors.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from kernel.errors import ThawError

Obj = dict[str, Any]
T = TypeVar("T")


class KubeError(ThawError):
    """A Kubernetes API call failed; carries the HTTP status and the API's reason/message."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{method} {path}: {status} {reason}: {message}")


class ConflictError(KubeError):
    """409: a stale resourceVersion (or the object already exists)."""


class NotFoundError(KubeError):
    """404: no such object."""


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    host: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True

    @classmethod
    def load(cls, kubeconfig: str | None, context: str | None, in_cluster: bool) -> KubeConfig:
        """From the in-cluster service account or a kubeconfig file (``None``: ``$KUBECONFIG`` or
        ``~/.kube/config``), through the ``kubernetes`` package's loaders."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context, client_configuration=cfg
                )
        except config.ConfigException as e:
            where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig!r}"
            raise ThawError(f"cannot load the {where}: {e}") from e
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        token = auth.removeprefix("Bearer ").strip() if auth else None
        return cls(
            host=str(cfg.host).rstrip("/"),
            token=token,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            verify_ssl=bool(cfg.verify_ssl),
        )


class KubeClient:
    """Async calls to one API server. Paths are full API paths (``/apis/group/v1/...``)."""

    def __init__(
        self, config: KubeConfig, timeout_s: float = 10.0, user_agent: str = "thaw-controller"
    ) -> None:
        self.config = config
        self.user_agent = user_agent
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        ctx: ssl.SSLContext | bool = False
        if self.config.host.startswith("https"):
            if self.config.verify_ssl:
                ctx = ssl.create_default_context(cafile=self.config.ca_file)
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.config.cert_file and self.config.key_file:
                ctx.load_cert_chain(self.config.cert_file, self.config.key_file)
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        self._session = aiohttp.ClientSession(
            base_url=None,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=ctx),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("KubeClient used outside `async with`")
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self.session.request(
                method,
                self.config.host + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise _error(resp.status, text, method, path)
                out: Obj = json.loads(text) if text else {}
                return out
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(0, type(e).__name__, str(e) or repr(e), method, path) from e

    async def get(self, path: str) -> Obj:
        return await self._call("GET", path)

    async def list_objects(self, path: str, label_selector: str | None = None) -> Obj:
        params = {"labelSelector": label_selector} if label_selector else None
        return await self._call("GET", path, params=params)

    async def create(self, path: str, obj: Obj) -> Obj:
        return await self._call("POST", path, obj)

    async def replace(self, path: str, obj: Obj) -> Obj:
        """PUT: the object must carry the resourceVersion it was read at (409 when stale)."""
        return await self._call("PUT", path, obj)

    async def json_patch(self, path: str, ops: list[Obj]) -> Obj:
        return await self._call("PATCH", path, ops, content_type="application/json-patch+json")

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        """PATCH with a JSON merge patch (RFC 7386: a None value removes the key)."""
        return await self._call("PATCH", path, patch, content_type="application/merge-patch+json")

    async def watch(
        self,
        path: str,
        resource_version: str,
        timeout_s: float = 300.0,
        label_selector: str | None = None,
    ) -> AsyncIterator[Obj]:
        """Events (``{"type": ..., "object": ...}``) after ``resource_version`` until the server
        ends the stream (``timeoutSeconds``); raise :class:`KubeError` on an HTTP error."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, int(timeout_s))),
            "allowWatchBookmarks": "true",
        }
        if label_selector:
            params["labelSelector"] = label_selector
        try:
            async with self.session.get(
                self.config.host + path,
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_s + 30),
            ) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.text(), "GET", path)
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(0, type(e).__name__, str(e) or repr(e), "WATCH", path) from e


def _error(status: int, text: str, method: str, path: str) -> KubeError:
    reason, message = "", text[:500]
    try:
        body = json.loads(text)
        reason = str(body.get("reason", ""))
        message = str(body.get("message", message))
    except (ValueError, AttributeError):
        pass
    cls = ConflictError if status == 409 else NotFoundError if status == 404 else KubeError
    return cls(status, reason, message, method, path)


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]], retries: int = 5, sleep_s: float = 0.05
) -> T:
    """Run ``attempt`` (which re-reads what it writes) again after each 409, ``retries`` times."""
    for i in range(retries + 1):
        try:
            return await attempt()
        except ConflictError:
            if i == retries:
                raise
            await asyncio.sleep(sleep_s * (i + 1))
    raise AssertionError("unreachable")


@dataclass
class Backoff:
    """Exponential backoff after API errors: ``first_s`` doubling to ``max_s``; reset on success."""

    first_s: float = 0.5
    max_s: float = 30.0
    current_s: float = 0.0

    def failed(self) -> float:
        """The delay before the next try."""
        self.current_s = (
            self.first_s if self.current_s == 0 else min(self.current_s * 2, self.max_s)
        )
        return self.current_s

    def succeeded(self) -> None:
        self.current_s = 0.0
