"""The Kubernetes API flags of ``thaw knative controller`` (kept apart: the CLI only wires)."""

from __future__ import annotations

import argparse
from typing import Any


def add_kube_api_args(c: argparse.ArgumentParser, namespace_help: str) -> Any:
    """Add the group "Kubernetes API" (--in-cluster, --kubeconfig, --context, --namespace) to
    ``c``; return it for the command's own API flags. ``KubeConfig.load(args.kubeconfig,
    args.context, args.in_cluster)`` reads them."""
    api = c.add_argument_group("Kubernetes API")
    api.add_argument(
        "--in-cluster", action="store_true", help="use the pod's service account (in a cluster)"
    )
    api.add_argument(
        "--kubeconfig",
        metavar="FILE",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)",
    )
    api.add_argument(
        "--context", metavar="NAME", default=None, help="kubeconfig context (default: current)"
    )
    api.add_argument("--namespace", metavar="NS", default=None, help=namespace_help)
    return api
