"""The names Thaw and Knative agree on: the autoscaler class and Thaw's own annotations.

Knative copies a Revision's annotations and labels onto its PodAutoscaler, so what ``thaw knative
render`` writes on a Service's revision template is what the controller reads on the PA.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

#: Knative's class annotation. Ours must not end in ``.knative.dev`` (Knative's webhook rejects it).
CLASS_ANNOTATION = "autoscaling.knative.dev/class"
#: The value of :data:`CLASS_ANNOTATION` that hands a revision to Thaw's controller.
AUTOSCALER_CLASS = "autoscaler.thaw.dev"

#: Annotation on the revision template (and so on the PA): the OpenAI model name it serves.
MODEL_ANNOTATION = "thaw.dev/model"
#: Annotation on the revision template (and so on the PA): the GPU pool it runs on.
POOL_ANNOTATION = "thaw.dev/pool"

# Knative's own annotations and labels that Thaw reads (never writes).
MIN_SCALE_ANNOTATION = "autoscaling.knative.dev/min-scale"
MAX_SCALE_ANNOTATION = "autoscaling.knative.dev/max-scale"
INITIAL_SCALE_ANNOTATION = "autoscaling.knative.dev/initial-scale"
REVISION_LABEL = "serving.knative.dev/revision"
SERVICE_LABEL = "serving.knative.dev/service"
#: Knative's label on the two Services of a revision (and so on their EndpointSlices): ``Public``
#: (the SKS's, which lists Knative's activator in Proxy mode) and ``Private`` (the revision's pods).
SERVICE_TYPE_LABEL = "networking.internal.knative.dev/serviceType"
PRIVATE = "Private"
#: Knative's label of a revision's configuration generation (a newer revision counts higher).
GENERATION_LABEL = "serving.knative.dev/configurationGeneration"

#: The Secret (in the Services' namespace, and in Thaw's for its controller) whose key holds the
#: credential of Thaw's engine guard: only a request carrying it may sleep, wake or reconfigure an
#: engine. The operator creates it (manifests/README.md); nothing on the public route carries it.
ENGINE_CREDENTIAL_SECRET = "thaw-engine-credential"
ENGINE_CREDENTIAL_KEY = "credential"

assert not AUTOSCALER_CLASS.endswith(".knative.dev")


def private_revision_slices(
    slices: Iterable[dict[str, Any]],
) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """``((namespace, revision), slice)`` for each *private* EndpointSlice of a revision (the
    Service that selects the revision's pods; the public ones list Knative's activator in Proxy
    mode). Pure."""
    for eps in slices:
        meta = eps.get("metadata") or {}
        labels = meta.get("labels") or {}
        revision = labels.get(REVISION_LABEL)
        if revision and labels.get(SERVICE_TYPE_LABEL) == PRIVATE:
            yield (str(meta.get("namespace", "")), str(revision)), eps


def ready_addresses(eps: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(address, pod)`` for each ready endpoint of one EndpointSlice: ready unless
    ``conditions.ready`` is false (the API says unset means ready; a terminating pod is never
    ready), at its first address; ``pod`` is its ``targetRef`` name ("" when none). Pure."""
    for ep in eps.get("endpoints") or []:
        addresses = ep.get("addresses") or []
        if addresses and (ep.get("conditions") or {}).get("ready") is not False:
            yield str(addresses[0]), str((ep.get("targetRef") or {}).get("name") or "")
