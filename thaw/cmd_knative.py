"""``thaw knative``: run Thaw as a Knative PodAutoscaler class, and render its Knative Services."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """\
Thaw on Knative Serving. Thaw plugs in as its own autoscaler class
(autoscaling.knative.dev/class: autoscaler.thaw.dev): Knative creates a PodAutoscaler per
revision, Thaw's controller reconciles it with the same decider `thaw up` uses.

subcommands:
  controller   the PodAutoscaler controller (runs in the cluster; manifests/ installs it)
  render       one Knative Service per (model, GPU pool) from the policy file, as YAML
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


# -- render (filled in by the render work) -----------------------------------------------------


def _register_render(sub: Any) -> None:
    r = sub.add_parser("render", help="render Knative Services from the policy file")
    r.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    raise SystemExit("thaw knative render: not written yet")
