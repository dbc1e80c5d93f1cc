"""The gateway's Envoy configuration: the static bootstrap and the xDS resources of each tick.

Pure: routes (:mod:`knative.gateway_routes`) and options in, Envoy v3 resources out, as the JSON
Envoy's REST xDS and its bootstrap parser read (proto3 JSON with ``@type`` on every ``Any``). No
I/O, no clock.

What a request meets, in order (the listener is in the bootstrap; routes, clusters and endpoints
come over xDS from Thaw's controller, :mod:`knative.gateway_xds`):

1. Envoy's ``json_to_metadata`` filter reads the body's ``model`` into dynamic metadata
   (``thaw: {model}``); a body that is not JSON sets ``thaw: {error: not_json}``, one without a
   ``model`` ``thaw: {error: missing}``. It reads bodies of :data:`JSON_CONTENT_TYPES` and those
   without a Content-Type; any other type sets nothing.
2. The route table (:func:`route_configuration`), first match wins: ``GET /health``;
   ``GET /v1/models`` (the routed models, OpenAI's list); ``GET /v1/models/{model}``; per model,
   a 413 when ``content-length`` is over the model's ``max_body_bytes``, then the route to its
   revision; a known ``model`` with no route: 404 ``model_not_found``; ``not_json`` or
   ``missing``: 400; anything else (a body that is not declared JSON): 400.
3. A model's route goes to the revision's aggregate cluster (:func:`revision_clusters`): first
   its ready pods (EDS, the queue-proxy addresses of the revision's private EndpointSlice,
   Envoy's least-request balancer scanning every host, per request), and when it has none the
   revision's public Service (Knative's activator in SKS Proxy mode), with
   ``Knative-Serving-Revision`` and ``Knative-Serving-Namespace`` set, as Knative's own ingress
   sets them, so the activator knows which revision to buffer for. A request is retried on
   another pod only when it never reached one (connect failure, refused stream, reset before the
   request was sent): a completion is not idempotent.
4. Every reply Envoy makes itself (404, 400, 413, 503 "no healthy upstream", 504 timeouts)
   leaves in OpenAI's error shape (:func:`local_reply_config`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from knative.gateway_routes import ModelRoute, RevisionCandidate

Obj = dict[str, Any]

#: The route configuration's name (RDS) and the dynamic metadata namespace of the model.
ROUTE_CONFIG_NAME = "thaw"
METADATA_NAMESPACE = "thaw"
#: The bootstrap's cluster that reaches Thaw's controller (the xDS server), and Envoy's admin.
XDS_CLUSTER = "thaw-xds"
ADMIN_CLUSTER = "thaw-admin"

#: Content types whose body the gateway reads as JSON (json_to_metadata compares the whole
#: header value, parameters included); a request without a Content-Type is read too.
JSON_CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=utf-8",
    "application/json; charset=UTF-8",
    "application/json;charset=UTF-8",
)

#: Knative's headers that name the revision a request is for (``pkg/activator/activator.go``);
#: Knative's ingress sets them on every route, and its activator reads them.
REVISION_HEADER = "Knative-Serving-Revision"
NAMESPACE_HEADER = "Knative-Serving-Namespace"

_TYPE = "type.googleapis.com/"
CLUSTER_TYPE = _TYPE + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _TYPE + "envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = _TYPE + "envoy.config.route.v3.RouteConfiguration"


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway reaches revisions, and the limits it applies.

    ``public_address``: where a revision's public Service answers, with ``{name}`` and
    ``{namespace}`` filled in (and ``{domain}``, the cluster domain); its port is
    ``public_port`` (Knative's public Services listen on 80). ``request_timeout_s``: the longest
    a request may take, a cold start included (the policy's ``cluster.request_timeout_s``, which
    is also the revisions' ``timeoutSeconds``). ``max_body_bytes``: per model (the policy's
    ``models[].activator.max_body_bytes``); models absent from it are bounded by the listener's
    buffer only.
    """

    public_address: str = "{name}.{namespace}.svc.{domain}"
    cluster_domain: str = "cluster.local"
    public_port: int = 80
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 2.0
    retries: int = 2
    max_body_bytes: Mapping[str, int] = field(default_factory=dict)
    #: How often Envoy polls each resource (the server holds a poll until something changes).
    refresh_delay_s: float = 0.2
    #: How long Envoy waits for one poll (must exceed the server's hold).
    poll_timeout_s: float = 30.0


@dataclass(frozen=True)
class Snapshot:
    """One tick's gateway configuration: Envoy resources by name, which model goes where, and
    the content versions (computed once, when it is built)."""

    clusters: Mapping[str, Obj]
    endpoints: Mapping[str, Obj]
    route_config: Obj
    #: The clusters the route configuration names (they must reach Envoy before it).
    route_clusters: frozenset[str]
    routes: Mapping[str, ModelRoute]
    clusters_version: str
    routes_version: str
    endpoint_versions: Mapping[str, str]

    @property
    def version(self) -> str:
        return version_of(
            [self.clusters_version, self.routes_version, sorted(self.endpoint_versions.items())]
        )


def version_of(payload: Any) -> str:
    """A content hash: the same resources always carry the same version (on any replica)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def api_config_source(options: GatewayOptions, wait_forever: bool = False) -> Obj:
    """Where Envoy fetches a resource: Thaw's controller, REST-JSON xDS over :data:`XDS_CLUSTER`.

    ``wait_forever`` (clusters, routes): Envoy waits for the first answer however long it takes,
    so a gateway without routes is never ready (it starts its listeners, ``/ready``'s included,
    after that answer). A pods cluster waits Envoy's default 15 s for its endpoints, then serves
    without them (its requests go to Knative's activator)."""
    out: Obj = {"resource_api_version": "V3"}
    if wait_forever:
        out["initial_fetch_timeout"] = "0s"
    return out | {
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [XDS_CLUSTER],
            "refresh_delay": _duration(options.refresh_delay_s),
            "request_timeout": _duration(options.poll_timeout_s),
        },
    }


# -- clusters and endpoints ----------------------------------------------------------------


def cluster_names(rev: RevisionCandidate) -> tuple[str, str, str]:
    """(aggregate, pods, public) cluster names of a revision."""
    base = f"thaw|{rev.namespace}|{rev.revision}"
    return base, f"{base}|pods", f"{base}|public"


def _breakers() -> Obj:
    # Envoy's defaults (1024 requests) would refuse a busy model with 503 overflow: LLM requests
    # are long, and the engines queue them anyway.
    return {
        "thresholds": [
            {
                "max_connections": 100000,
                "max_pending_requests": 100000,
                "max_requests": 100000,
                "max_retries": 1000,
            }
        ]
    }


def revision_clusters(rev: RevisionCandidate, options: GatewayOptions) -> dict[str, Obj]:
    """The three clusters of a routed revision: its ready pods (EDS, least-request), its public
    Service (Knative's activator at zero), and the aggregate that tries them in that order."""
    agg, pods, public = cluster_names(rev)
    connect = _duration(options.connect_timeout_s)
    host = options.public_address.format(
        name=rev.public_service, namespace=rev.namespace, domain=options.cluster_domain
    )
    return {
        pods: {
            "@type": CLUSTER_TYPE,
            "name": pods,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": api_config_source(options), "service_name": pods},
            "connect_timeout": connect,
            "load_balancing_policy": {
                "policies": [
                    {
                        "typed_extension_config": {
                            "name": "envoy.load_balancing_policies.least_request",
                            "typed_config": {
                                "@type": _TYPE + "envoy.extensions.load_balancing_policies."
                                "least_request.v3.LeastRequest",
                                # A few pods, long requests: look at every pod, not two.
                                "selection_method": "FULL_SCAN",
                            },
                        }
                    }
                ]
            },
            # A pod that refuses connections is taken out; its HTTP answers (a 503 of an
            # overloaded queue-proxy) are the engine's, not a reason to eject it.
            "outlier_detection": {
                "split_external_local_origin_errors": True,
                "consecutive_local_origin_failure": 3,
                "consecutive_5xx": 0,
                "consecutive_gateway_failure": 0,
                "base_ejection_time": "5s",
            },
            "circuit_breakers": _breakers(),
        },
        public: {
            "@type": CLUSTER_TYPE,
            "name": public,
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_PREFERRED",
            "connect_timeout": connect,
            "load_assignment": {
                "cluster_name": public,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": host,
                                            "port_value": options.public_port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
            "circuit_breakers": _breakers(),
        },
        agg: {
            "@type": CLUSTER_TYPE,
            "name": agg,
            "connect_timeout": connect,
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {
                "name": "envoy.clusters.aggregate",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                    "clusters": [pods, public],
                },
            },
        },
    }


def load_assignment(rev: RevisionCandidate) -> Obj:
    """The EDS resource of a revision's pods cluster: its ready queue-proxies."""
    _, pods, _ = cluster_names(rev)
    lb_endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": e.address, "port_value": e.port}},
                **({"hostname": e.pod} if e.pod else {}),
            },
            "health_status": "HEALTHY",
        }
        for e in sorted(rev.ready, key=lambda e: (e.address, e.port))
    ]
    return {
        "@type": ENDPOINT_TYPE,
        "cluster_name": pods,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }


# -- routes ----------------------------------------------------------------------------------


def _metadata_match(key: str, value: str | None) -> Obj:
    matcher: Obj = {"filter": METADATA_NAMESPACE, "path": [{"key": key}]}
    matcher["value"] = (
        {"string_match": {"exact": value}} if value is not None else {"present_match": True}
    )
    return matcher


def _direct(status: int, body: str) -> Obj:
    return {"status": status, "body": {"inline_string": body}}


def _model_object(model: str) -> Obj:
    return {"id": model, "object": "model", "created": 0, "owned_by": "thaw"}


def _model_route(route: ModelRoute, options: GatewayOptions) -> Obj:
    rev = route.revision
    agg, _, _ = cluster_names(rev)
    timeout = _duration(options.request_timeout_s)
    return {
        "name": f"model:{route.model}",
        "match": {"prefix": "/", "dynamic_metadata": [_metadata_match("model", route.model)]},
        "request_headers_to_add": [
            {
                "header": {"key": REVISION_HEADER, "value": rev.revision},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
            {
                "header": {"key": NAMESPACE_HEADER, "value": rev.namespace},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
        ],
        "route": {
            "cluster": agg,
            # A request may wait through a cold start at Knative's activator, then stream.
            "timeout": timeout,
            "idle_timeout": timeout,
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,reset-before-request",
                "num_retries": options.retries,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": _TYPE + "envoy.extensions.retry.host.previous_hosts.v3."
                            "PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": "3",
            },
        },
    }


def route_configuration(routes: Mapping[str, ModelRoute], options: GatewayOptions) -> Obj:
    """The gateway's one route table (RDS ``thaw``); see the module docstring for its order."""
    models = sorted(routes)
    listing = {"object": "list", "data": [_model_object(m) for m in models]}
    table: list[Obj] = [
        {
            "name": "health",
            "match": {"path": "/health", "headers": [_method("GET")]},
            "direct_response": _direct(200, "{}"),
        },
        {
            "name": "models",
            "match": {"path": "/v1/models", "headers": [_method("GET")]},
            "direct_response": _direct(200, json.dumps(listing)),
        },
    ]
    for m in models:
        table.append(
            {
                "name": f"models:{m}",
                "match": {"path": f"/v1/models/{m}", "headers": [_method("GET")]},
                "direct_response": _direct(200, json.dumps(_model_object(m))),
            }
        )
    for m in models:
        limit = options.max_body_bytes.get(m)
        if limit is not None:
            table.append(
                {
                    "name": f"too-large:{m}",
                    "match": {
                        "prefix": "/",
                        "dynamic_metadata": [_metadata_match("model", m)],
                        "headers": [
                            {
                                "name": "content-length",
                                "range_match": {"start": limit + 1, "end": 2**62},
                            }
                        ],
                    },
                    "direct_response": _direct(
                        413,
                        f"The request body is larger than the {limit} bytes model {m} accepts "
                        "(models[].activator.max_body_bytes).",
                    ),
                }
            )
        table.append(_model_route(routes[m], options))
    table += [
        {
            "name": "unknown-model",
            "match": {"prefix": "/", "dynamic_metadata": [_metadata_match("model", None)]},
            "direct_response": _direct(404, "model_not_found"),
        },
        {
            "name": "not-json",
            "match": {"prefix": "/", "dynamic_metadata": [_metadata_match("error", "not_json")]},
            "direct_response": _direct(
                400,
                "The request body is not valid JSON (send a JSON object, with Content-Type: "
                "application/json or none).",
            ),
        },
        {
            "name": "no-model",
            "match": {"prefix": "/", "dynamic_metadata": [_metadata_match("error", "missing")]},
            "direct_response": _direct(
                400, 'The request body has no "model": send a JSON object with a model name.'
            ),
        },
        {
            "name": "not-json-content-type",
            "match": {"prefix": "/"},
            "direct_response": _direct(
                400,
                "The request body must be JSON: send Content-Type: application/json (or none).",
            ),
        },
    ]
    return {
        "@type": ROUTE_TYPE,
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{"name": "thaw", "domains": ["*"], "routes": table}],
    }


def _method(method: str) -> Obj:
    return {"name": ":method", "string_match": {"exact": method}}


def snapshot(routes: Mapping[str, ModelRoute], options: GatewayOptions) -> Snapshot:
    """The gateway's whole configuration for these routes."""
    return SnapshotBuilder().build(routes, options)


class SnapshotBuilder:
    """:func:`snapshot` with a memory, for a controller that builds one every tick: a revision's
    clusters are built and hashed once per (revision, public Service, options), its endpoints
    once per set of ready pods, the route table once per set of routes. Pure: no I/O, no clock;
    the memory holds only what the last build used."""

    def __init__(self) -> None:
        self._clusters: dict[Any, tuple[dict[str, Obj], str]] = {}
        self._endpoints: dict[Any, tuple[Obj, str]] = {}
        self._routes: tuple[Any, Obj, str] | None = None

    def build(self, routes: Mapping[str, ModelRoute], options: GatewayOptions) -> Snapshot:
        opts = (
            options.public_address,
            options.cluster_domain,
            options.public_port,
            options.connect_timeout_s,
            options.refresh_delay_s,
            options.poll_timeout_s,
        )
        clusters: dict[str, Obj] = {}
        endpoints: dict[str, Obj] = {}
        endpoint_versions: dict[str, str] = {}
        family_versions: list[str] = []
        keep_clusters: dict[Any, tuple[dict[str, Obj], str]] = {}
        keep_endpoints: dict[Any, tuple[Obj, str]] = {}
        for route in routes.values():
            rev = route.revision
            ckey = (rev.namespace, rev.revision, rev.public_service, opts)
            built = self._clusters.get(ckey)
            if built is None:
                family = revision_clusters(rev, options)
                built = (family, version_of(family))
            keep_clusters[ckey] = built
            clusters.update(built[0])
            family_versions.append(built[1])
            ekey = (rev.namespace, rev.revision, rev.ready)
            assignment = self._endpoints.get(ekey)
            if assignment is None:
                eds = load_assignment(rev)
                assignment = (eds, version_of(eds))
            keep_endpoints[ekey] = assignment
            name = cluster_names(rev)[1]
            endpoints[name], endpoint_versions[name] = assignment
        self._clusters, self._endpoints = keep_clusters, keep_endpoints
        chosen = sorted((m, r.revision.namespace, r.revision.revision) for m, r in routes.items())
        rkey = (
            tuple(chosen),
            options.request_timeout_s,
            options.retries,
            tuple(sorted(options.max_body_bytes.items())),
        )
        if self._routes is None or self._routes[0] != rkey:
            table = route_configuration(routes, options)
            self._routes = (rkey, table, version_of(table))
        _, table, routes_version = self._routes
        return Snapshot(
            clusters=dict(sorted(clusters.items())),
            endpoints=dict(sorted(endpoints.items())),
            route_config=table,
            route_clusters=frozenset(cluster_names(r.revision)[0] for r in routes.values()),
            routes=dict(routes),
            clusters_version=version_of(sorted(family_versions)),
            routes_version=routes_version,
            endpoint_versions=endpoint_versions,
        )


# -- the bootstrap ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapOptions:
    """The gateway's own addresses and its way to the controller (``thaw knative gateway``
    flags; the manifests' ConfigMap is this with the defaults)."""

    xds_host: str = "thaw-controller-xds.thaw-system.svc.cluster.local"
    xds_port: int = 18000
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    health_port: int = 8081
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    #: The largest request body read at all (each model's own limit is in its routes).
    max_request_bytes: int = 16 * 1024 * 1024
    #: Connections the gateway holds at most (Envoy's overload manager refuses more).
    max_connections: int = 50000
    node_id: str = "thaw-gateway"


def local_reply_config() -> Obj:
    """Envoy's own replies as OpenAI errors: ``{"error": {message, type, param, code}}``."""

    def error(message: str, kind: str, param: str | None, code: str | None) -> Obj:
        return {
            "json_format": {
                "error": {"message": message, "type": kind, "param": param, "code": code}
            }
        }

    def status(code: int) -> Obj:
        return {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": code, "runtime_key": "_"}}
            }
        }

    return {
        "mappers": [
            {
                # The gateway's own 200s (/v1/models, /health) are already JSON.
                "filter": status(200),
                "body_format_override": {
                    "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                    "content_type": "application/json",
                },
            },
            {
                "filter": status(404),
                "body_format_override": error(
                    "The model `%DYNAMIC_METADATA(thaw:model)%` does not exist.",
                    "invalid_request_error",
                    "model",
                    "model_not_found",
                ),
            },
            {
                "filter": {
                    "or_filter": {
                        "filters": [status(400), status(413)],
                    }
                },
                "body_format_override": error(
                    "%LOCAL_REPLY_BODY%", "invalid_request_error", None, None
                ),
            },
        ],
        "body_format": error("%LOCAL_REPLY_BODY%", "server_error", None, None),
    }


def _listener(name: str, host: str, port: int, hcm: Obj, buffer_bytes: int | None = None) -> Obj:
    out: Obj = {
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPE + "envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            **hcm,
                        },
                    }
                ]
            }
        ],
    }
    if buffer_bytes is not None:
        out["per_connection_buffer_limit_bytes"] = buffer_bytes
    return out


def _router() -> Obj:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }


def bootstrap(options: BootstrapOptions, gateway: GatewayOptions | None = None) -> Obj:
    """Envoy's bootstrap for the gateway: the listener (json_to_metadata, then the router, routes
    over RDS), a health listener whose ``/ready`` fails once draining starts (``POST
    /healthcheck/fail`` on the admin port, which stays on loopback) and which serves Envoy's
    ``/stats/prometheus``, the controller as :data:`XDS_CLUSTER`, and clusters over CDS."""
    gw = gateway or GatewayOptions()
    json_filter = {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {
                "rules": [
                    {
                        "selectors": [{"key": "model"}],
                        "on_present": {
                            "metadata_namespace": METADATA_NAMESPACE,
                            "key": "model",
                            "type": "STRING",
                        },
                        "on_missing": {
                            "metadata_namespace": METADATA_NAMESPACE,
                            "key": "error",
                            "value": "missing",
                        },
                        "on_error": {
                            "metadata_namespace": METADATA_NAMESPACE,
                            "key": "error",
                            "value": "not_json",
                        },
                    }
                ],
                "allow_content_types": list(JSON_CONTENT_TYPES),
                "allow_empty_content_type": True,
            },
        },
    }
    timeout = _duration(gw.request_timeout_s)
    main_hcm: Obj = {
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "stream_idle_timeout": timeout,
        "rds": {
            "route_config_name": ROUTE_CONFIG_NAME,
            "config_source": api_config_source(gw, wait_forever=True),
        },
        "http_filters": [json_filter, _router()],
        "local_reply_config": local_reply_config(),
    }
    health_hcm: Obj = {
        "stat_prefix": "health",
        "route_config": {
            "name": "health",
            "virtual_hosts": [
                {
                    "name": "health",
                    "domains": ["*"],
                    "routes": [
                        # Envoy's own metrics for Prometheus (the admin port stays on loopback).
                        {
                            "match": {"path": "/stats/prometheus", "headers": [_method("GET")]},
                            "route": {"cluster": ADMIN_CLUSTER},
                        },
                        {"match": {"prefix": "/"}, "direct_response": _direct(404, "not found")},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": "/ready"}}],
                },
            },
            _router(),
        ],
    }
    return {
        "node": {"id": options.node_id, "cluster": "thaw-gateway"},
        "admin": {
            "address": {
                "socket_address": {"address": options.admin_host, "port_value": options.admin_port}
            }
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE + "envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": options.max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                _listener(
                    "gateway",
                    options.listen_host,
                    options.listen_port,
                    main_hcm,
                    buffer_bytes=options.max_request_bytes,
                ),
                _listener("health", options.listen_host, options.health_port, health_hcm),
            ],
            "clusters": [
                {
                    "name": ADMIN_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": ADMIN_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": options.admin_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS",
                    "dns_lookup_family": "V4_PREFERRED",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": options.xds_host,
                                                    "port_value": options.xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    # Every controller replica answers; only the leader is healthy (its /ready),
                    # so polls go to the replica that computes the routes.
                    "health_checks": [
                        {
                            "timeout": "1s",
                            "interval": "2s",
                            "no_traffic_interval": "2s",
                            "unhealthy_threshold": 1,
                            "healthy_threshold": 1,
                            "http_health_check": {"path": "/ready"},
                        }
                    ],
                    "circuit_breakers": _breakers(),
                },
            ],
        },
        "dynamic_resources": {"cds_config": api_config_source(gw, wait_forever=True)},
    }


def configured_models(snap: Snapshot) -> Sequence[str]:
    """The models the snapshot routes, sorted."""
    return sorted(snap.routes)


def drain_script(admin_port: int, min_s: float, max_s: float) -> str:
    """The gateway's drain, as a bash script (the official Envoy image has bash, no curl): fail
    the health check through Envoy's admin port (``/ready`` answers 503; Envoy then closes every
    HTTP/1 connection after its current response and sends HTTP/2 GOAWAY, so clients move to the
    other replicas), wait ``min_s`` for endpoints and load balancers to drop this replica, then
    until no request is in flight, at most ``max_s`` in all. Kubernetes runs it as the
    container's preStop hook (then sends SIGTERM); ``thaw knative gateway`` runs it on SIGTERM or
    Ctrl-C."""
    return f"""#!/bin/bash
# Drain this Thaw gateway (Envoy) before it stops; see knative/gateway_envoy.py drain_script().
admin() {{  # admin METHOD PATH: one request to Envoy's admin port, the body on stdout
  exec 3<>/dev/tcp/127.0.0.1/{admin_port} || return 1
  local crlf=$'\\r\\n'
  printf '%s %s HTTP/1.1%sHost: admin%sContent-Length: 0%sConnection: close%s%s' \\
    "$1" "$2" "$crlf" "$crlf" "$crlf" "$crlf" "$crlf" >&3
  sed '1,/^\\r$/d' <&3
  exec 3<&-
}}
admin POST /healthcheck/fail >/dev/null || exit 0
sleep {min_s:g}
waited=0
while (( waited < {max(0, round(max_s - min_s))} )); do
  active=$(admin GET '/stats?filter=http.gateway.downstream_rq_active' | sed -n 's/.*: //p')
  [[ "${{active:-0}}" == 0 ]] && exit 0
  sleep 1
  (( waited += 1 ))
done
"""
