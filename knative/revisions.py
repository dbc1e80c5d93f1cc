"""The controller's per-tick view of each revision of Thaw's class: one plain value per PA.

Pure. :class:`RevisionView` is what one tick saw and decided for one revision (its PA, SKS,
scale, ready private endpoints, reachability, routing state and demand); the controller keeps the
latest per PA (``Controller.revisions``) for whoever routes requests to revisions (the gateway)
and for tests. :func:`ready_pods` reads a revision's ready pods from its *private*
EndpointSlices (the public ones list Knative's activator in Proxy mode).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from knative.contract import private_revision_slices, ready_addresses

Obj = dict[str, Any]

#: The private Service's ports to the queue-proxy: HTTP/1 (8012) and h2c (8013) revisions.
QUEUE_PORT_NAMES = ("http", "http2")


@dataclass(frozen=True)
class ReadyPod:
    """One ready pod of a revision, as its private EndpointSlice lists it: the pod's name, its
    address and the queue-proxy's port (0 when the slice names none)."""

    pod: str
    address: str
    port: int


@dataclass(frozen=True)
class RevisionView:
    """One revision of Thaw's class at the end of a controller tick.

    ``name``: the PA's (Knative names it after the revision); ``reachability``: the PA's
    ``spec.reachability`` (``Reachable``, ``Unreachable`` or ""); ``generation``: the revision's
    configuration generation label (0 when absent); ``spec_replicas``: the scale target's
    ``spec.replicas`` after this tick's write; ``ready``: its ready pods; ``sks_mode``: the SKS's
    mode as planned (``Serve``/``Proxy``); ``sks_ready``: Knative's ``IsReady`` on the SKS;
    ``activator_in_path``: Knative's networking controller reports the activator in the path for
    the latest spec; ``public_service``: the SKS's ``serviceName`` (the Service the route and the
    activator fallback use; "" until set); ``private_service``: its ``privateServiceName``;
    ``want``: KPA's want (-1 unknown); ``active``: the PA's ``Active`` condition (``True``,
    ``False``, ``Unknown``); ``buffered``: the requests held in front of it this tick.
    """

    namespace: str
    name: str
    revision: str
    model: str
    pool: str | None
    reachability: str
    generation: int
    spec_replicas: int
    ready: tuple[ReadyPod, ...]
    sks_mode: str
    sks_ready: bool
    activator_in_path: bool
    public_service: str
    private_service: str
    want: int
    active: str
    buffered: int

    @property
    def reachable(self) -> bool:
        return self.reachability != "Unreachable"


def _queue_port(eps: Obj) -> int:
    for name in QUEUE_PORT_NAMES:
        for p in eps.get("ports") or []:
            if p.get("name") == name and isinstance(p.get("port"), int):
                return int(p["port"])
    return 0


def ready_pods(slices: Iterable[Obj]) -> dict[tuple[str, str], tuple[ReadyPod, ...]]:
    """(namespace, revision) -> its ready pods (sorted by pod), from private EndpointSlices.

    An endpoint is ready unless ``conditions.ready`` is false (unset reads as ready); a pod
    listed in two slices (dual stack) counts once; public slices and FQDN slices are skipped."""
    found: dict[tuple[str, str], dict[str, ReadyPod]] = {}
    for key, eps in private_revision_slices(slices):
        if eps.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = _queue_port(eps)
        pods = found.setdefault(key, {})
        for address, pod in ready_addresses(eps):
            pods.setdefault(pod or address, ReadyPod(pod or address, address, port))
    return {k: tuple(v[p] for p in sorted(v)) for k, v in found.items()}
