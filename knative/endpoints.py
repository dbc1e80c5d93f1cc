"""The revisions of Thaw's class as the gateway sees them, read from Kubernetes objects.

Pure: the PodAutoscalers and the revisions' EndpointSlices, as listed, in; one
:class:`~knative.gateway_routes.RevisionCandidate` per PA of Thaw's class that names a model out.
No I/O.

- a revision's ready pods are the ready endpoints of its *private* EndpointSlices (label
  ``networking.internal.knative.dev/serviceType: Private``, the Service that selects the
  revision's pods), at the slice's queue-proxy port ``http`` (8012): Knative's queue-proxy, so
  Knative still counts each pod's requests. An h2c revision's slices name that port ``http2``:
  the gateway lists no pod of it (it speaks HTTP/1 to pods), so its requests always go through
  Knative's activator, which speaks h2c. The *public* slices are
  never used: in Proxy mode they list Knative's activator. An endpoint is ready unless
  ``conditions.ready`` is false (the API says unset means ready; a terminating pod is never
  ready); a pod listed in two slices counts once.
- its public Service is the SKS's (``status.serviceName`` on the PA as Knative's KPA writes it;
  Knative names it after the revision);
- its model and pool are the ``thaw.dev/model`` and ``thaw.dev/pool`` annotations
  ``thaw knative render`` writes on the revision template (Knative copies them onto the PA);
- its reachability is the PA's ``spec.reachability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from knative.contract import (
    AUTOSCALER_CLASS,
    CLASS_ANNOTATION,
    GENERATION_LABEL,
    MODEL_ANNOTATION,
    POOL_ANNOTATION,
    REVISION_LABEL,
    private_revision_slices,
    ready_addresses,
)
from knative.gateway_routes import QueueEndpoint, RevisionCandidate

Obj = dict[str, Any]

#: The private Service's port to the queue-proxy of an HTTP/1 revision (target 8012).
QUEUE_PORT_NAME = "http"


def _queue_port(eps: Obj) -> int | None:
    for p in eps.get("ports") or []:
        if p.get("name") == QUEUE_PORT_NAME and isinstance(p.get("port"), int):
            return int(p["port"])
    return None


def ready_queue_endpoints(
    slices: Sequence[Obj],
) -> dict[tuple[str, str], tuple[QueueEndpoint, ...]]:
    """(namespace, revision) -> its ready queue-proxies, sorted, from the private slices.

    Slices that are public, of no revision, without a queue-proxy port or of addressType FQDN
    are skipped."""
    found: dict[tuple[str, str], dict[str, QueueEndpoint]] = {}
    for key, eps in private_revision_slices(slices):
        port = _queue_port(eps)
        if eps.get("addressType") not in ("IPv4", "IPv6") or port is None:
            continue
        for address, pod in ready_addresses(eps):
            found.setdefault(key, {}).setdefault(
                pod or f"{address}:{port}", QueueEndpoint(address, port, pod)
            )
    return {
        key: tuple(sorted(eps.values(), key=lambda e: (e.address, e.port)))
        for key, eps in found.items()
    }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def revision_candidates(pas: Sequence[Obj], slices: Sequence[Obj]) -> list[RevisionCandidate]:
    """One candidate per PA of Thaw's class with a ``thaw.dev/model`` annotation, sorted by
    (namespace, revision)."""
    ready = ready_queue_endpoints(slices)
    out: list[RevisionCandidate] = []
    for pa in pas:
        meta = pa.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if annotations.get(CLASS_ANNOTATION) != AUTOSCALER_CLASS:
            continue
        model = annotations.get(MODEL_ANNOTATION)
        if not isinstance(model, str) or not model:
            continue
        labels = meta.get("labels") or {}
        ns = str(meta.get("namespace", ""))
        name = str(meta.get("name", ""))
        revision = str(labels.get(REVISION_LABEL) or name)
        status = pa.get("status") or {}
        pods = ready.get((ns, revision), ())
        pool = annotations.get(POOL_ANNOTATION)
        out.append(
            RevisionCandidate(
                namespace=ns,
                revision=revision,
                model=model,
                pool=str(pool) if pool else None,
                reachability=str((pa.get("spec") or {}).get("reachability") or ""),
                ready=pods,
                public_service=str(status.get("serviceName") or name),
                replicas=max(
                    len(pods), _int(status.get("actualScale")), _int(status.get("desiredScale"))
                ),
                generation=_int(labels.get(GENERATION_LABEL)),
            )
        )
    return sorted(out, key=lambda c: (c.namespace, c.revision))
