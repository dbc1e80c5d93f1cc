"""A watch-backed cache of one Kubernetes collection, with client-go informer semantics.

:class:`Informer` lists the collection once, then watches it from the list's
``resourceVersion``; each event updates the cache (and calls ``on_event``). When the server ends
a watch (its ``timeoutSeconds``) the informer watches again from the last resourceVersion it saw
(bookmarks move it too), without a new list; only a ``410 Gone`` (the resourceVersion is older
than the server's history: an ``ERROR`` event or an HTTP 410) or another API error makes it list
again, after a backoff for errors. A fresh list replaces the cache, and what disappeared meanwhile
is reported as ``DELETED``.

Reads are from memory (:meth:`Informer.get`, :meth:`Informer.values`); writes never go to the
cache: they go to the API server, and come back through the watch. :attr:`Informer.synced` is set
after the first list. Requests made: one list at start, one watch per ``watch_timeout_s``, and a
list again only after a 410 or an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from kernel.clock import Clock
from knative.kube import Backoff, KubeClient, KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


class GoneError(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def resource_version(obj: Obj | None) -> int:
    """An object's resourceVersion as a number (0 when absent or not a number)."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class Informer:
    """List + watch one collection (``path``, optionally a label selector) into memory."""

    def __init__(
        self,
        kube: KubeClient,
        path: str,
        *,
        label_selector: str | None = None,
        watch_timeout_s: float = 300.0,
        on_event: Callable[[str, Obj], None] | None = None,
        name: str = "",
        clock: Clock | None = None,
        min_watch_s: float = 1.0,
    ) -> None:
        self.kube = kube
        self.path = path
        self.label_selector = label_selector
        self.watch_timeout_s = watch_timeout_s
        self.on_event = on_event
        self.name = name or path
        #: A watch that ends within ``min_watch_s`` without an event is not restarted before
        #: ``min_watch_s`` has passed (a server that closes watches at once is not hammered).
        self.clock = clock
        self.min_watch_s = min_watch_s
        self._events = 0
        self._items: dict[Key, Obj] = {}
        self._rv = ""
        self.synced = asyncio.Event()
        #: Lists made (the first, and one after each 410 or error).
        self.lists = 0

    # -- reads ----------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Obj | None:
        """The cached object (do not modify it), or None."""
        return self._items.get((namespace, name))

    def values(self) -> Iterable[Obj]:
        return self._items.values()

    def __len__(self) -> int:
        return len(self._items)

    # -- the loop -------------------------------------------------------------------------------

    def _apply(self, etype: str, obj: Obj) -> None:
        key = key_of(obj)
        if etype == "DELETED":
            if self._items.pop(key, None) is None:
                return
        else:
            old = self._items.get(key)
            if old is not None and resource_version(old) > resource_version(obj):
                return
            self._items[key] = obj
        if self.on_event is not None:
            self.on_event(etype, obj)

    async def _list(self) -> None:
        listing = await self.kube.list_objects(self.path, label_selector=self.label_selector)
        self.lists += 1
        fresh = {key_of(o): o for o in listing.get("items") or []}
        for key in set(self._items) - set(fresh):
            self._apply("DELETED", self._items[key])
        for obj in fresh.values():
            old = self._items.get(key_of(obj))
            if old is None or resource_version(old) != resource_version(obj):
                self._apply("MODIFIED" if old is not None else "ADDED", obj)
        self._rv = str((listing.get("metadata") or {}).get("resourceVersion", ""))
        self.synced.set()

    async def _watch(self, stop: asyncio.Event) -> None:
        """Watch from the last resourceVersion until the server ends the stream."""
        async for event in self.kube.watch(
            self.path, self._rv, self.watch_timeout_s, label_selector=self.label_selector
        ):
            if stop.is_set():
                return
            etype = str(event.get("type", ""))
            obj = event.get("object") or {}
            if etype == "ERROR":
                code = int(obj.get("code", 0) or 0)
                message = str(obj.get("message", obj))
                if code == 410:
                    raise GoneError(410, "Expired", message, "WATCH", self.path)
                raise KubeError(code, str(obj.get("reason", "")), message, "WATCH", self.path)
            rv = ((obj.get("metadata") or {}).get("resourceVersion")) or ""
            if etype == "BOOKMARK":
                self._rv = str(rv) or self._rv
                continue
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self._events += 1
                self._apply(etype, obj)
                if rv:
                    self._rv = str(rv)

    async def run(self, stop: asyncio.Event) -> None:
        """List, then watch (again from the last resourceVersion each time the stream ends);
        list again after a 410 or an error, with backoff after errors; until ``stop``."""
        backoff = Backoff()
        need_list = True
        while not stop.is_set():
            try:
                if need_list:
                    await self._list()
                    need_list = False
                started_s = self.clock.monotonic() if self.clock is not None else None
                events = self._events
                await self._watch(stop)
                backoff.succeeded()
                if started_s is not None and self.clock is not None and events == self._events:
                    left_s = self.min_watch_s - (self.clock.monotonic() - started_s)
                    if left_s > 0:
                        await _sleep(stop, left_s)
            except GoneError as e:
                log.info("%s: %s; listing again", self.name, e.message)
                need_list = True
            except KubeError as e:
                if e.status == 410:
                    need_list = True
                    continue
                need_list = True
                delay = backoff.failed()
                log.warning("%s list/watch: %s; again in %.1f s", self.name, e, delay)
                await _sleep(stop, delay)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds`` (on the event loop's clock), or less if ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
