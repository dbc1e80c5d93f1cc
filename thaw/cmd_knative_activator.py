"""``thaw knative activator``: flags and wiring of Thaw's activator as the cluster front door.

The activator is :mod:`activator` unchanged; only its endpoint source differs from ``thaw up``:
:class:`knative.endpoints.KnativeEndpoints` (the ready pods of each model's
revisions, from the Kubernetes API). :func:`serve_cluster` is the whole wiring, used by
:func:`run` and by the tests in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.vocab import THAW_ACTIVATOR_BUFFERED_REQUESTS
from knative.contract import (
    AUTOSCALER_CLASS,
    MODEL_ANNOTATION,
    PRIVATE,
    REVISION_LABEL,
    SERVICE_TYPE_LABEL,
)
from knative.endpoints import QUEUE_PORT_NAME
from thaw.kube_args import add_kube_api_args

if TYPE_CHECKING:  # the heavy imports wait for run(): `thaw --help` stays quick
    from activator.core import Activator
    from activator.types import ModelLimits
    from knative.kube import KubeConfig
    from policy_file.watch import PolicyWatcher

log = logging.getLogger("thaw.knative.activator")

DESCRIPTION = f"""\
Thaw's activator as the cluster's OpenAI-compatible front door (/v1/completions,
/v1/chat/completions, /v1/models, /health, /metrics): it routes each request by its "model" to
the ready pods of that model's Knative revisions, and holds it while the model is at zero.

Where the pods are: every --refresh-s it lists, in --namespace, the PodAutoscalers of class
{AUTOSCALER_CLASS} (each names its model in the {MODEL_ANNOTATION} annotation, as
`thaw knative render` writes it) and the EndpointSlices of their revisions' private Services
(labels {REVISION_LABEL} and
{SERVICE_TYPE_LABEL}={PRIVATE}). Each ready endpoint is a replica at
http://POD-IP:PORT, PORT being the slice's "{QUEUE_PORT_NAME}" port: Knative's queue-proxy, so
Knative still sees each pod's concurrency. Requests go to the replica with the fewest
outstanding requests; one that fails before its first byte is retried on another.

At zero: a request waits in its model's buffer (models[].activator in --config: buffer_size,
wait_timeout_s, max_body_bytes) and /metrics shows {THAW_ACTIVATOR_BUFFERED_REQUESTS}{{model=...}},
which `thaw knative controller --activator-url` scrapes each tick: that is how demand at zero
reaches the controller (nothing is pushed to it). Once a pod of the model is ready, the buffer
is released in arrival order. A model that is not in --config gets OpenAI's 404
(model_not_found); a full buffer 503 with Retry-After; a wait past wait_timeout_s 504.
--config is re-read when it changes (a ConfigMap update): new limits, new or removed models.

Access to the API server: in a pod, --in-cluster (its service account, which needs only "list"
on podautoscalers and endpointslices in --namespace: manifests/activator-rbac.yaml); elsewhere
--kubeconfig FILE [--context NAME] (default $KUBECONFIG or ~/.kube/config).

examples:
  thaw knative activator --in-cluster --config /etc/thaw/policy.yaml --host 0.0.0.0
  thaw knative activator --kubeconfig ~/.kube/config --namespace thaw --port 8080
  curl localhost:8080/v1/models
"""


def register_args(c: argparse.ArgumentParser) -> None:
    c.description = DESCRIPTION
    c.formatter_class = argparse.RawDescriptionHelpFormatter
    api = add_kube_api_args(
        c, "namespace of the models' Knative Services (default: cluster.namespace of --config)"
    )
    api.add_argument(
        "--refresh-s",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between two listings of PodAutoscalers and EndpointSlices "
        "(default: %(default)s)",
    )
    front = c.add_argument_group("front door")
    front.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="Thaw policy file: the models served and their activator limits "
        "(default: the built-in policy)",
    )
    front.add_argument(
        "--host", default=None, help="address to listen on (default: listen.host of --config)"
    )
    front.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port to listen on (default: listen.port of --config)",
    )
    front.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer KEY' on everything but /health and /metrics; one "
        "key per line (default: the comma-separated THAW_API_KEYS variable, else no keys)",
    )


async def serve_cluster(
    kube_config: KubeConfig,
    namespace: str,
    models: Mapping[str, ModelLimits],
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    refresh_s: float = 1.0,
    watcher: PolicyWatcher | None = None,
    api_keys: Iterable[str] | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve the activator on ``host:port`` with endpoints from the API server until ``stop``."""
    from activator.core import Activator
    from activator.server import serve
    from kernel.clock import SystemClock
    from knative.endpoints import KnativeEndpoints, ScrapedDemand
    from knative.kube import KubeClient

    async with KubeClient(kube_config, user_agent="thaw-activator") as kube:
        endpoints = KnativeEndpoints(kube, namespace)
        activator = Activator(models, endpoints, ScrapedDemand(), SystemClock(), api_keys=api_keys)
        endpoints.on_change = activator.endpoints_changed
        refresher = asyncio.create_task(endpoints.run(stop, refresh_s))
        reloader = asyncio.create_task(_reload(watcher, activator, stop, refresh_s))
        try:
            await serve(activator, host, port, stop=stop, started=started)
        finally:
            stop.set()
            for task in (refresher, reloader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await activator.close()


async def _reload(
    watcher: PolicyWatcher | None, activator: Activator, stop: asyncio.Event, every_s: float
) -> None:
    from policy_file.schema import model_limits

    while watcher is not None and not stop.is_set():
        new = watcher.poll()
        if new is not None:
            activator.set_models(model_limits(new))
            log.info("policy reloaded: serving %s", ", ".join(activator.models()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(every_s, 1.0))


def run(args: argparse.Namespace) -> int:
    from kernel.errors import ThawError
    from knative.kube import KubeConfig
    from policy_file.load import PolicyError, default_config_path, load_policy
    from policy_file.schema import model_limits
    from policy_file.support import Runtime
    from policy_file.watch import PolicyWatcher
    from thaw.api_keys import api_keys

    prog = "thaw knative activator"
    if args.refresh_s <= 0:
        print(f"{prog}: --refresh-s = {args.refresh_s}, must be > 0", file=sys.stderr)
        return 2
    path: Path = args.config or default_config_path()
    try:
        config = load_policy(path, Runtime.KNATIVE)
        keys = api_keys(args.api_key_file, os.environ.get("THAW_API_KEYS"))
        kube_config = KubeConfig.load(args.kubeconfig, args.context, args.in_cluster)
    except PolicyError as e:
        print(f"{prog}: {path}: invalid policy\n{e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ThawError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    namespace = args.namespace or (config.cluster.namespace if config.cluster else None)
    if namespace is None:
        print(
            f"{prog}: no namespace: pass --namespace NS or set cluster.namespace in {path}",
            file=sys.stderr,
        )
        return 2
    host = args.host if args.host is not None else config.listen.host
    port = args.port if args.port is not None else config.listen.port

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started = asyncio.Event()
        waiter = asyncio.create_task(started.wait())

        def listening(task: asyncio.Task[bool]) -> None:
            if not task.cancelled():
                log.info(
                    "Thaw's activator on http://%s:%d/v1 serving %s from the pods in %s",
                    host,
                    port,
                    ", ".join(sorted(m.name for m in config.models)),
                    namespace,
                )

        waiter.add_done_callback(listening)
        try:
            await serve_cluster(
                kube_config,
                namespace,
                model_limits(config),
                host,
                port,
                stop,
                refresh_s=args.refresh_s,
                watcher=PolicyWatcher(path, config, Runtime.KNATIVE) if args.config else None,
                api_keys=keys,
                started=started,
            )
        finally:
            waiter.cancel()

    asyncio.run(main())
    return 0
