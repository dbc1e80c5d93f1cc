"""``thaw knative controller``: flags and wiring of the PodAutoscaler controller."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

import aiohttp

from events.sink import emitter_from_env
from kernel.clock import SystemClock
from kernel.errors import ThawError
from knative.contract import AUTOSCALER_CLASS
from knative.controller import Controller, ControllerSettings
from knative.demand import (
    ACTIVATOR_SELECTOR,
    KNATIVE_NAMESPACE,
    CombinedDemand,
    KnativeActivatorPods,
)
from knative.gateway import Gateway
from knative.gateway_envoy import GatewayOptions
from knative.gateway_xds import XdsServer
from knative.kube import KubeClient, KubeConfig
from policy_file.load import PolicyError, default_config_path, load_policy
from policy_file.support import Runtime
from thaw.kube_args import add_kube_api_args

DESCRIPTION = f"""\
Reconcile Knative PodAutoscalers of class {AUTOSCALER_CLASS} with Thaw's decider.

Knative creates one PodAutoscaler (PA) per revision; a revision whose template carries
  autoscaling.knative.dev/class: {AUTOSCALER_CLASS}
is Thaw's. For each such PA the controller keeps a ServerlessService (SKS) named after it,
scales the PA's Deployment through its scale subresource and writes the PA's status, as
Knative's own KPA does; PAs of other classes are never touched. Each tick it scrapes the
revision's pods' vLLM /metrics directly (EndpointSlices labelled serving.knative.dev/revision,
port --engine-port) and reads the requests held at zero from every pod of Knative's activator
(--knative-namespace, pods --activator-selector): their kn_revision_request_queued gauge, per
revision, which Knative exports with metrics-protocol: prometheus in config-observability.

Thaw's gateway (Envoy, `thaw knative gateway` or manifests/gateway.yaml) gets its routes from
here: every tick the leader chooses one revision per model (warm first, then the pool where the
model fits and costs least per unit served) and serves the routes, clusters and ready pods over
REST xDS on --xds-port (/ready answers 200 on the leader only).

The policy per model (thaw.dev/model annotation on the PA) comes from --config. Scale bounds
are Knative's: the PA's autoscaling.knative.dev/min-scale, max-scale and initial-scale
annotations (thaw knative render writes the policy's values there), else Knative's
config-autoscaler (read and watched in knative-serving, with config-deployment's
progress-deadline); an Unreachable revision (spec.reachability) has no minimum and is never
scaled for demand. scale_to_zero_grace_s is the model's when the file sets it, else
config-autoscaler's scale-to-zero-grace-period.

Scale to zero follows Knative's KPA: when the decider wants 0, the PA (active for a stable
window) is marked inactive (Active=False NoTraffic) and the SKS put in Proxy; the Deployment
goes to 0 once the PA has been inactive for the grace and Knative reports its activator in the
path: the grace is counted once, as in thaw up and thaw sim. While a cold start is in flight the
PA is Active=Unknown (Queued); it gives up only after the revision's progress deadline + 30 s.
Warm pools and shared GPUs (pools with share > 1, or models whose warm_pool is on): the PA's
scale is the engines wanted awake and the Deployment's is awake + asleep; each tick the
GPU-memory arbiter decides per GPU (one per node on shared pools) which engine pods sleep, wake,
start or stop, sleeps and stops first (stops: controller.kubernetes.io/pod-deletion-cost on the
pods chosen, then a scale-down), wakes and starts once those answered. Sleep, wake and
/is_sleeping go straight to the pod IP with the credential of the mounted Secret
thaw-engine-credential (/var/run/secrets/thaw/engine/credential).
The cluster is read through watches (PodAutoscalers, ServerlessServices, Deployments,
EndpointSlices, the revisions' pods, Knative's ConfigMaps): at rest a tick makes no API request.
Every replica change and completed cold start goes out as a CloudEvent to $K_SINK (Knative's
SinkBinding sets it; unset: nothing is sent).

Access to the API server: in a pod, --in-cluster (the service account token); elsewhere
--kubeconfig FILE [--context NAME] (default $KUBECONFIG or ~/.kube/config). Only the replica
that holds the Lease --lease-namespace/--lease-name acts; run two for fail-over.

examples:
  thaw knative controller --in-cluster --config /etc/thaw/policy.yaml --xds-port 18000
  thaw knative controller --kubeconfig ~/.kube/config --namespace llm --tick-s 1
"""


def register_args(c: argparse.ArgumentParser) -> None:
    c.description = DESCRIPTION
    c.formatter_class = argparse.RawDescriptionHelpFormatter
    add_kube_api_args(c, "watch PodAutoscalers in this namespace only (default: all)")
    pol = c.add_argument_group("policy and signals")
    pol.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="Thaw policy file; models[].name matches the PA's thaw.dev/model "
        "annotation (default: the built-in policy)",
    )
    pol.add_argument(
        "--knative-namespace",
        metavar="NS",
        default=KNATIVE_NAMESPACE,
        help="Knative's namespace: its activator pods, scraped each tick, and its "
        "config-autoscaler and config-deployment, watched (default: %(default)s)",
    )
    pol.add_argument(
        "--activator-selector",
        metavar="LABELS",
        default=ACTIVATOR_SELECTOR,
        help="label selector of Knative's activator pods (default: %(default)s)",
    )
    pol.add_argument(
        "--engine-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="port of the engine's /metrics on each pod (default: %(default)s)",
    )
    pol.add_argument(
        "--tick-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds between reconciles (default: the policy's tick_s)",
    )
    gw = c.add_argument_group("gateway routes (xDS)")
    gw.add_argument(
        "--xds-host",
        default="0.0.0.0",
        metavar="ADDR",
        help="address of the xDS server the gateways poll (default: %(default)s)",
    )
    gw.add_argument(
        "--xds-port",
        type=int,
        default=18000,
        metavar="PORT",
        help="port of the xDS server; 0: serve no gateway (default: %(default)s)",
    )
    gw.add_argument(
        "--public-address",
        default=GatewayOptions().public_address,
        metavar="TEMPLATE",
        help="host of a revision's public Service, where the gateway sends a model at zero "
        "({name}, {namespace}, {domain} filled in; default: %(default)s)",
    )
    gw.add_argument(
        "--public-port",
        type=int,
        default=GatewayOptions().public_port,
        metavar="PORT",
        help="port of the revisions' public Services (default: %(default)s)",
    )
    gw.add_argument(
        "--cluster-domain",
        default=GatewayOptions().cluster_domain,
        metavar="DOMAIN",
        help="the cluster's DNS domain (default: %(default)s)",
    )
    le = c.add_argument_group("leader election")
    le.add_argument(
        "--lease-namespace",
        default="thaw-system",
        metavar="NS",
        help="namespace of the Lease (default: %(default)s)",
    )
    le.add_argument(
        "--lease-name",
        default="thaw-controller",
        metavar="NAME",
        help="name of the Lease (default: %(default)s)",
    )
    le.add_argument(
        "--identity",
        default=None,
        metavar="ID",
        help="this replica's identity (default: $POD_NAME or the hostname)",
    )
    le.add_argument(
        "--lease-duration-s",
        type=float,
        default=15.0,
        metavar="S",
        help="a silent leader is replaced after this long (default: %(default)s)",
    )
    c.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])


def run(args: argparse.Namespace) -> int:
    prog = "thaw knative controller"
    if args.tick_s is not None and args.tick_s <= 0:
        print(f"{prog}: --tick-s = {args.tick_s}, must be > 0", file=sys.stderr)
        return 2
    for flag, value in (("--xds-port", args.xds_port), ("--public-port", args.public_port)):
        if not 0 <= value <= 65535 or (flag == "--public-port" and value == 0):
            print(f"{prog}: {flag} = {value}, must be a TCP port", file=sys.stderr)
            return 2
    path = args.config or default_config_path()
    try:
        config = load_policy(path, Runtime.KNATIVE)
        kube_config = KubeConfig.load(args.kubeconfig, args.context, args.in_cluster)
    except PolicyError as e:
        print(f"{prog}: {path}: invalid policy\n{e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ThawError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    settings = ControllerSettings(
        namespace=args.namespace,
        tick_s=args.tick_s if args.tick_s is not None else config.tick_s,
        engine_port=args.engine_port,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        identity=args.identity or os.environ.get("POD_NAME") or socket.gethostname(),
        lease_duration_s=args.lease_duration_s,
        renew_every_s=max(1.0, args.lease_duration_s / 3),
        knative_namespace=args.knative_namespace,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent = f"thaw-controller/{settings.identity}"
        async with (
            KubeClient(kube_config, user_agent=agent) as kube,
            aiohttp.ClientSession() as http,
        ):
            clock = SystemClock()
            demand = KnativeActivatorPods(
                kube, http, clock, args.knative_namespace, args.activator_selector
            )
            gateway: Gateway | None = None
            if args.xds_port:
                server = XdsServer(clock)
                try:
                    await server.start(args.xds_host, args.xds_port)
                except OSError as e:
                    raise ThawError(
                        f"--xds-host {args.xds_host} --xds-port {args.xds_port}: cannot listen: "
                        f"{e.strerror or e}"
                    ) from e
                options = GatewayOptions(
                    public_address=args.public_address,
                    public_port=args.public_port,
                    cluster_domain=args.cluster_domain,
                )
                gateway = Gateway(server, options)
            events = emitter_from_env(os.environ, clock)
            await events.start()
            controller = Controller(
                kube,
                http,
                config,
                CombinedDemand([demand]),
                clock,
                settings,
                reports=events,
                gateway=gateway,
            )
            try:
                await controller.run(stop)
            finally:
                await events.close()
                if gateway is not None:
                    await gateway.server.close()

    try:
        asyncio.run(main())
    except ThawError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0
