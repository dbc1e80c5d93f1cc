"""Thaw on Knative Serving: a PodAutoscaler-class controller, the render of Knative Services from
the policy file, CloudEvents and Prometheus history. The names both sides agree on live in
:mod:`knative.contract`."""
