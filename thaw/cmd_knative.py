"""``thaw knative``: run Thaw as a Knative PodAutoscaler class, and render its Knative Services."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = """\
Thaw on Knative Serving. Thaw plugs in as its own autoscaler class
(autoscaling.knative.dev/class: autoscaler.thaw.dev): Knative creates a PodAutoscaler per
revision, Thaw's controller reconciles it with the same decider `thaw up` uses.

subcommands:
  controller   the PodAutoscaler controller (runs in the cluster; manifests/ installs it)
  render       one Knative Service per (model, GPU pool) from the policy file, as YAML
  gateway      the OpenAI-compatible front door (Envoy) routing to the models' ready pods
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "knative",
        help="Thaw on Knative: the PodAutoscaler controller and Service render",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="knative_command", metavar="SUBCOMMAND")
    _register_controller(sub)
    _register_render(sub)
    _register_gateway(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# -- controller (filled in by the controller work) -------------------------------------------


def _register_controller(sub: Any) -> None:
    from thaw import cmd_knative_controller

    c = sub.add_parser("controller", help="run the PodAutoscaler controller")
    cmd_knative_controller.register_args(c)
    c.set_defaults(func=_controller)


def _controller(args: argparse.Namespace) -> int:
    from thaw import cmd_knative_controller

    return cmd_knative_controller.run(args)


# -- gateway ----------------------------------------------------------------------------------


def _register_gateway(sub: Any) -> None:
    from thaw import cmd_knative_gateway

    g = sub.add_parser("gateway", help="run the front door (Envoy): route by model to ready pods")
    cmd_knative_gateway.register_args(g)
    g.set_defaults(func=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    from thaw import cmd_knative_gateway

    return cmd_knative_gateway.run(args)


# -- render (filled in by the render work) -----------------------------------------------------


RENDER_HELP = """\
Write one Knative Service (serving.knative.dev/v1) per (model, GPU pool where it fits) from the
policy file's models: and cluster: sections, as a YAML stream. Each Service is named
<model>-<pool>, carries Thaw's autoscaler class, min-scale / initial-scale / max-scale from the
model's autoscaling (min_replicas, initial_replicas, max_replicas within the pool's max_replicas;
0 / 0 / 1 by default), and runs vLLM's OpenAI server on the pool's GPUs (node selector,
tolerations, GPU requests), loading an s3:// model through the node's cache agent from the
hostPath cache directory. Settings the Knative runtime does not honour yet (the forecaster, the
front door's buffer limits) are refused, naming them (`thaw policy support`).

A model runs on its `pools:` if given, else on every pool whose GPU memory per replica holds its
`weights_bytes` (unknown weights fit everywhere).

Every engine runs behind Thaw's engine guard: the stream starts with the ConfigMap
thaw-engine-guard (the guard's source, which vLLM loads with --middleware), and each pod mounts
the Secret thaw-engine-credential, which you create once per namespace (manifests/README.md):
only a request carrying it may sleep, wake or reconfigure an engine, and the readiness probe
(/thaw/ready) fails while an engine sleeps.

A pool with `share: N` (N > 1) is shared: each engine pod requests one time slice of a GPU
(nvidia.com/gpu.shared) on nodes whose GPUs the NVIDIA device plugin cuts N ways; print the
device plugin's ConfigMap for the policy's shared pools with --device-plugin-config (or apply
manifests/gpu-sharing/). The controller keeps a shared GPU's awake engines within its memory
(sleeping the others), so engines need not all fit awake at once. Without sharing, an engine
holds its whole GPU asleep too: a warm pool saves start latency, not GPU-hours.

Knative must allow what the Services use: `kubectl apply -k manifests/` patches config-features
(nodeSelector, tolerations, hostPath volumes) and config-autoscaler (allow-zero-initial-scale).

examples:
  thaw knative render --config policy.yaml | kubectl apply -f -
  thaw knative render --config policy.yaml --out services.yaml
  thaw knative render --config policy.yaml --device-plugin-config | kubectl apply -f -
"""


def _register_render(sub: Any) -> None:
    r = sub.add_parser(
        "render",
        help="render Knative Services from the policy file",
        description=RENDER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="policy file (YAML) with models: and a cluster: section (see `thaw policy schema`)",
    )
    r.add_argument(
        "--out",
        default="-",
        metavar="FILE",
        help="where to write the YAML stream; - is stdout (default: %(default)s)",
    )
    r.add_argument(
        "--device-plugin-config",
        action="store_true",
        help="write instead the NVIDIA device plugin's time-slicing ConfigMap (namespace "
        "gpu-operator) for the policy's shared pools",
    )
    r.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    from engine.vllm_site import thaw_engine_guard
    from kernel.errors import ConfigError
    from knative.render import device_plugin_config_map, render_objects, to_yaml
    from policy_file.load import load_policy
    from policy_file.support import Runtime

    guard_source = Path(thaw_engine_guard.__file__).read_text(encoding="utf-8")
    try:
        policy = load_policy(args.config, Runtime.KNATIVE)
        if args.device_plugin_config:
            shares = [p.share for p in policy.cluster.pools] if policy.cluster else []
            objects = [device_plugin_config_map(shares)]
            what = "the device plugin's ConfigMap"
        else:
            objects = render_objects(policy, guard_source)
            what = f"the engine guard's ConfigMap and {len(objects) - 1} Knative Services"
    except ConfigError as e:
        print(f"thaw knative render: {e}", file=sys.stderr)
        return 2
    text = to_yaml(objects)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {what} to {args.out}", file=sys.stderr)
    return 0
