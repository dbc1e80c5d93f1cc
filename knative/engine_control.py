"""Thaw's control calls to one engine pod: is it asleep, sleep, wake. The thin adapter.

Every call goes straight to the pod's IP and engine port (never through the revision's Service,
whose path is the public one and carries no credential), with Thaw's credential in the engine
guard's header (:data:`engine.vllm_site.thaw_engine_guard.CREDENTIAL_HEADER`), read from the
mounted Secret at each call (a rotated Secret takes effect without a restart). vLLM's contract:
``GET /is_sleeping`` -> ``{"is_sleeping": bool}``; ``POST /sleep?level=N``; ``POST /wake_up``;
after a level-2 sleep the weights were discarded, so the wake is vLLM's recipe (the one
``bench/gpu_warm_pool.py`` measures): ``/wake_up?tags=weights``, ``/collective_rpc``
``{"method": "reload_weights"}`` (from the node's local disk: the model cache), then
``/wake_up?tags=kv_cache`` and ``/reset_prefix_cache`` (the prefix cache held the old weights'
keys).
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp

from engine.vllm_site.thaw_engine_guard import CREDENTIAL_HEADER
from kernel.errors import ThawError
from kernel.vocab import SleepLevel

log = logging.getLogger(__name__)


class EngineControlError(ThawError):
    """A control call to an engine failed (the message names the pod, the call and the answer)."""


class EngineControl:
    """Control calls to engine pods on ``port``, with the credential in ``credential_file``."""

    def __init__(
        self, http: aiohttp.ClientSession, port: int, credential_file: str, timeout_s: float
    ) -> None:
        self.http = http
        self.port = port
        self.credential_file = credential_file
        self.timeout_s = timeout_s

    def _headers(self) -> dict[str, str]:
        try:
            credential = Path(self.credential_file).read_text().strip()
        except OSError as e:
            raise EngineControlError(
                f"the engine credential {self.credential_file} cannot be read ({e}); mount the "
                "Secret thaw-engine-credential in the controller"
            ) from e
        if not credential:
            raise EngineControlError(f"the engine credential {self.credential_file} is empty")
        return {CREDENTIAL_HEADER: credential}

    async def _call(
        self, method: str, address: str, path: str, json: object = None, timeout_s: float = 0.0
    ) -> object:
        url = f"http://{address}:{self.port}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self.http.request(
                method, url, json=json, headers=self._headers(), timeout=timeout
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise EngineControlError(f"{method} {url}: {resp.status} {text[:300]}")
                try:
                    return await resp.json(content_type=None) if text else None
                except ValueError:
                    return text
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EngineControlError(f"{method} {url}: {type(e).__name__} {e}") from e

    async def is_sleeping(self, address: str, timeout_s: float) -> bool | None:
        """What the engine says (None when it does not answer: still starting, or gone)."""
        try:
            got = await self._call("GET", address, "/is_sleeping", timeout_s=timeout_s)
        except EngineControlError as e:
            log.debug("%s", e)
            return None
        if isinstance(got, dict) and isinstance(got.get("is_sleeping"), bool):
            return bool(got["is_sleeping"])
        return None

    async def sleep(self, address: str, level: SleepLevel) -> None:
        await self._call("POST", address, f"/sleep?level={level}")

    async def wake(self, address: str, level: SleepLevel) -> None:
        """Wake; after level 2 reload the weights and reset the prefix cache on the way."""
        if level == 1:
            await self._call("POST", address, "/wake_up")
            return
        await self._call("POST", address, "/wake_up?tags=weights")
        await self._call("POST", address, "/collective_rpc", json={"method": "reload_weights"})
        await self._call("POST", address, "/wake_up?tags=kv_cache")
        await self._call("POST", address, "/reset_prefix_cache")


__all__ = ["EngineControl", "EngineControlError"]
