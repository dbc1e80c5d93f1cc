"""The gateway's part of a controller tick: revisions in, routes chosen, Envoy configuration out.

Thin: :meth:`Gateway.tick` takes the tick's view of the revisions of Thaw's class
(:class:`~knative.gateway_routes.RevisionCandidate`) and the policy, chooses each model's one
revision (:func:`~knative.gateway_routes.choose_routes`: warm first, then placement over the
policy's pools), builds the Envoy resources (:func:`~knative.gateway_envoy.snapshot`) and
publishes them to the xDS server (:class:`~knative.gateway_xds.XdsServer`), logging each model
whose revision changed. :func:`pools_of` and :func:`options_for` read the policy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from knative.gateway_envoy import GatewayOptions, Snapshot, SnapshotBuilder
from knative.gateway_routes import ModelRoute, PoolInfo, RevisionCandidate, choose_routes
from knative.gateway_xds import XdsServer
from policy_file.schema import ThawConfig

log = logging.getLogger(__name__)


def pools_of(config: ThawConfig) -> list[PoolInfo]:
    """The policy's pools as the route choice ranks them (none without a ``cluster:``)."""
    if config.cluster is None:
        return []
    return [
        PoolInfo(
            name=p.name,
            gpu_memory_bytes=p.gpu_memory_bytes,
            gpus_per_replica=p.gpus_per_replica,
            cost_per_hour_usd=p.cost_per_hour_usd,
            max_replicas=p.max_replicas,
        )
        for p in config.cluster.pools
    ]


def options_for(config: ThawConfig, base: GatewayOptions) -> GatewayOptions:
    """``base`` with the policy's request timeout and each model's body limit."""
    timeout = config.cluster.request_timeout_s if config.cluster else base.request_timeout_s
    return dataclasses.replace(
        base,
        request_timeout_s=float(timeout),
        max_body_bytes={m.name: m.activator.max_body_bytes for m in config.models},
    )


def route_of(route: ModelRoute) -> tuple[str, str]:
    return route.revision.namespace, route.revision.revision


class Gateway:
    """Chooses routes and publishes them each tick (leader only; :meth:`serve` says whether this
    replica is the one gateways should listen to)."""

    def __init__(self, server: XdsServer, options: GatewayOptions | None = None) -> None:
        self.server = server
        self.options = options or GatewayOptions()
        self.routes: dict[str, ModelRoute] = {}
        self._builder = SnapshotBuilder()
        self._last: tuple[tuple[RevisionCandidate, ...], ThawConfig, Snapshot] | None = None

    async def serve(self, leader: bool) -> None:
        await self.server.set_serving(leader)

    async def tick(self, candidates: Sequence[RevisionCandidate], config: ThawConfig) -> Snapshot:
        """Choose, build and publish; nothing is rebuilt when neither the revisions nor the
        policy changed since the last tick (the usual case at rest)."""
        cands = tuple(candidates)
        if self._last is not None and self._last[0] == cands and self._last[1] == config:
            await self.server.publish(self._last[2])
            return self._last[2]
        weights = {m.name: m.weights_bytes for m in config.models}
        routes = choose_routes(candidates, pools_of(config), weights)
        for model in sorted(set(routes) | set(self.routes)):
            old, new = self.routes.get(model), routes.get(model)
            if new is None:
                log.info(
                    "gateway: model %s has no reachable revision: 404 until one appears", model
                )
            elif old is None or route_of(old) != route_of(new):
                log.info("gateway: model %s -> %s", model, new.reason)
        self.routes = routes
        snap = self._builder.build(routes, options_for(config, self.options))
        self._last = (cands, config, snap)
        await self.server.publish(snap)
        return snap
