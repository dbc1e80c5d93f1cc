"""Thaw's controller as the gateway's xDS server: REST-JSON, long-polled, make-before-break.

Owns the delivery of :class:`~knative.gateway_envoy.Snapshot` to every gateway (Envoy) replica.
Envoy's REST subscriptions POST a ``DiscoveryRequest`` to ``/v3/discovery:clusters``,
``:routes`` and ``:endpoints`` (one subscription per EDS cluster), carrying the version they last
accepted. The server answers at once when it has something newer for that Envoy, else holds the
poll until something changes (``hold_s``; then ``304 Not Modified``, which Envoy takes as "no
change"), so an update reaches every gateway within one poll's turnaround, not a polling period.

Order, per Envoy (its ``node.id``): xDS over REST has no ordering across resource types, so the
server sequences them as Envoy's xDS protocol asks of a server (make before break):

- a route table is served only once that Envoy has accepted every cluster it names (its CDS
  version says so); until then it keeps the table it has;
- a cluster its accepted route table still names is kept in its CDS answers (with the last
  definition and endpoints it got) until it has accepted a table that no longer names it.

So a model moving to another revision never meets "cluster not found", and the old revision's
clusters go away only after the move. Versions are content hashes, so a new leader recognises
what a gateway holds; a version it does not know is taken as "unknown", and the newest
configuration is served.

Only a replica that :attr:`serving` (the controller's leader, once it has published) answers
discovery and ``/ready``; the others answer 503, and the gateway's active health check on
``/ready`` sends its polls to the leader. ``GET /debug/routes`` shows which revision each model
goes to, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web

from kernel.clock import Clock
from knative.gateway_envoy import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ROUTE_TYPE,
    Snapshot,
    version_of,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PATHS = {
    CLUSTER_TYPE: "/v3/discovery:clusters",
    ROUTE_TYPE: "/v3/discovery:routes",
    ENDPOINT_TYPE: "/v3/discovery:endpoints",
}
#: Versions remembered per Envoy and type (what it may still be holding).
_HISTORY = 4


@dataclass
class _Node:
    """What one Envoy was sent and has accepted."""

    seen_s: float
    sent_clusters: dict[str, dict[str, Obj]] = field(default_factory=dict)
    sent_routes: dict[str, tuple[Obj, frozenset[str]]] = field(default_factory=dict)
    #: The clusters it holds (by name), None when unknown (it accepted a version we never sent).
    clusters: dict[str, Obj] | None = None
    #: The route table it holds and the clusters it names; None when unknown or none yet.
    routes: tuple[Obj, frozenset[str]] | None = None


def _remember(history: dict[str, Any], version: str, value: Any) -> None:
    history.pop(version, None)
    history[version] = value
    while len(history) > _HISTORY:
        history.pop(next(iter(history)))


def _family(name: str) -> str:
    """The aggregate cluster a cluster belongs to (``thaw|ns|rev|pods`` -> ``thaw|ns|rev``)."""
    parts = name.split("|")
    return "|".join(parts[:3]) if len(parts) > 3 else name


class XdsServer:
    """Serves the latest published :class:`Snapshot` to gateways; build it, ``await start()``,
    call :meth:`publish` every tick (and set :attr:`serving`), ``await close()``."""

    def __init__(self, clock: Clock, hold_s: float = 10.0, node_ttl_s: float = 600.0) -> None:
        self.clock = clock
        self.hold_s = hold_s
        self.node_ttl_s = node_ttl_s
        #: Whether this replica answers (the controller's leader); others answer 503.
        self.serving = False
        self.snapshot: Snapshot | None = None
        self._nodes: dict[str, _Node] = {}
        #: The last endpoints of every pods cluster some Envoy may still hold.
        self._endpoints: dict[str, Obj] = {}
        self._changed = asyncio.Condition()
        self._runner: aiohttp.web.AppRunner | None = None
        self.port: int | None = None
        self.app = aiohttp.web.Application()
        for type_url, path in PATHS.items():
            self.app.router.add_post(path, self._handler(type_url))
        self.app.router.add_get("/ready", self._ready)
        self.app.router.add_get("/debug/routes", self._debug_routes)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        self._runner = aiohttp.web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else port
        log.info("gateway xDS on http://%s:%s", host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, snap: Snapshot) -> bool:
        """Make ``snap`` the configuration to serve; True when it differs from the last one."""
        now_s = self.clock.monotonic()
        for node_id in [n for n, s in self._nodes.items() if now_s - s.seen_s > self.node_ttl_s]:
            del self._nodes[node_id]
        old = self.snapshot
        if old is not None and old.version == snap.version:
            return False
        self.snapshot = snap
        held: set[str] = set(snap.endpoints)  # what some gateway may still hold or be sent
        for node in self._nodes.values():
            held |= set(node.clusters or {})
            for sent in node.sent_clusters.values():
                held |= set(sent)
        self._endpoints = {
            name: e
            for name, e in {**self._endpoints, **dict(snap.endpoints)}.items()
            if name in held
        }
        await self._notify()
        return True

    async def set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- what one Envoy gets ----------------------------------------------------------------

    def _node(self, request: Obj) -> _Node:
        node_id = str((request.get("node") or {}).get("id") or "")
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(seen_s=self.clock.monotonic())
        node.seen_s = self.clock.monotonic()
        return node

    @staticmethod
    def _accept(node: _Node, type_url: str, version: str) -> bool:
        """Record what the Envoy says it holds; True when that changed."""
        if type_url == CLUSTER_TYPE:
            held = {} if not version else node.sent_clusters.get(version)
            if held is not node.clusters:
                node.clusters = held
                return True
        elif type_url == ROUTE_TYPE:
            table = node.sent_routes.get(version) if version else None
            if table is not node.routes:
                node.routes = table
                return True
        return False

    def _clusters_for(self, node: _Node, snap: Snapshot) -> dict[str, Obj]:
        out = dict(snap.clusters)
        if node.routes is not None:
            keep = {name for name in node.routes[1] if name not in out}
            for name, cluster in (node.clusters or {}).items():
                if _family(name) in keep:
                    out[name] = cluster
        return dict(sorted(out.items()))

    def _routes_for(self, node: _Node, snap: Snapshot) -> tuple[Obj, frozenset[str]]:
        target = (snap.route_config, snap.route_clusters)
        if node.clusters is None or snap.route_clusters <= set(node.clusters):
            return target
        return node.routes or target

    def _endpoints_for(self, names: list[str], snap: Snapshot) -> list[Obj]:
        out = []
        for name in sorted(names):
            assignment = snap.endpoints.get(name) or self._endpoints.get(name)
            out.append(
                assignment or {"@type": ENDPOINT_TYPE, "cluster_name": name, "endpoints": []}
            )
        return out

    def _answer(self, node: _Node, type_url: str, names: list[str]) -> tuple[str, list[Obj]]:
        snap = self.snapshot
        assert snap is not None
        if type_url == CLUSTER_TYPE:
            clusters = self._clusters_for(node, snap)
            kept = len(clusters) != len(snap.clusters)
            version = version_of(clusters) if kept else snap.clusters_version
            _remember(node.sent_clusters, version, clusters)
            return version, list(clusters.values())
        if type_url == ROUTE_TYPE:
            table, refs = self._routes_for(node, snap)
            version = snap.routes_version if table is snap.route_config else version_of(table)
            _remember(node.sent_routes, version, (table, refs))
            return version, [table]
        assignments = self._endpoints_for(names, snap)
        versions = [snap.endpoint_versions.get(a["cluster_name"]) for a in assignments]
        if len(versions) == 1 and versions[0] is not None:
            return versions[0], assignments
        return version_of(assignments), assignments

    # -- HTTP -------------------------------------------------------------------------------

    def _handler(self, type_url: str) -> Any:
        async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
            return await self._discover(request, type_url)

        return handle

    async def _discover(
        self, request: aiohttp.web.Request, type_url: str
    ) -> aiohttp.web.StreamResponse:
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            return aiohttp.web.json_response({"error": f"not a DiscoveryRequest: {e}"}, status=400)
        if body.get("error_detail"):
            log.warning(
                "gateway %s rejected %s: %s", _node_id(body), type_url, body["error_detail"]
            )
        have = str(body.get("version_info") or "")
        names = [str(n) for n in body.get("resource_names") or []]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold_s
        async with self._changed:
            while True:
                if not self.serving or self.snapshot is None:
                    return aiohttp.web.Response(status=503, text="not the leader, or no routes yet")
                node = self._node(body)
                if self._accept(node, type_url, have):
                    self._changed.notify_all()  # a held route table may now be served
                version, resources = self._answer(node, type_url, names)
                if version != have:
                    return aiohttp.web.json_response(
                        {
                            "version_info": version,
                            "resources": resources,
                            "type_url": type_url,
                            "nonce": version,
                        }
                    )
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return aiohttp.web.Response(status=304)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    async def _ready(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.serving and self.snapshot is not None:
            return aiohttp.web.Response(text="ok\n")
        return aiohttp.web.Response(status=503, text="not the leader, or no routes yet\n")

    async def _debug_routes(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        snap = self.snapshot
        routes = {} if snap is None else snap.routes
        return aiohttp.web.json_response(
            {
                "serving": self.serving,
                "version": None if snap is None else snap.version,
                "models": {
                    m: {
                        "namespace": r.revision.namespace,
                        "revision": r.revision.revision,
                        "pool": r.revision.pool,
                        "ready": [f"{e.address}:{e.port}" for e in r.revision.ready],
                        "reason": r.reason,
                    }
                    for m, r in sorted(routes.items())
                },
                "gateways": sorted(self._nodes),
            }
        )


def _node_id(body: Obj) -> str:
    return str((body.get("node") or {}).get("id") or "?")
