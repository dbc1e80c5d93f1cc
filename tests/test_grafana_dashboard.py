"""``manifests/grafana/thaw.json``: every metric its queries name is one Thaw exports, read from
the real registries (the local stack's, which holds the activator's, and the model cache's), not
from a hand-written list; and it has the panels the issue asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path

from procs import REPO
from prometheus_client import CollectorRegistry

from kernel.clock import SystemClock
from local_stack.stack import LocalStack
from model_cache.metrics import CacheMetrics
from policy_file.load import parse_policy

DASHBOARD = REPO / "manifests" / "grafana" / "thaw.json"
#: What each kind of family exports as samples (prometheus_client's suffixes).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "info": ("_info",),
}


def exported_names(tmp_path: Path) -> set[str]:
    config = parse_policy("models:\n  - {name: m, engine: {kind: emulator}}\n")
    stack = LocalStack(config, SystemClock(), work_dir=tmp_path)
    cache = CollectorRegistry()
    CacheMetrics(cache, lambda: 0.0, None)
    names: set[str] = set()
    for registry in (stack.registry, cache):
        for family in registry.collect():
            names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def queries(dashboard: dict[str, object]) -> list[str]:
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    return exprs


def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names(tmp_path)
    assert "thaw_replica_metrics_stale" in exported  # the registries are the real ones
    used = {m for q in queries(dashboard) for m in re.findall(r"\bthaw_[a-z0-9_]+", q)}
    assert used, "no thaw_ metric queried"
    unknown = sorted(used - exported)
    assert unknown == [], f"queried but not exported: {unknown}"


def test_the_dashboard_shows_what_an_operator_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {m for q in queries(dashboard) for m in re.findall(r"\bthaw_[a-z0-9_]+", q)}
    wanted = {
        "thaw_model_replicas",  # replicas by state
        "thaw_autoscaler_desired_replicas",  # desired vs actual
        "thaw_activator_buffered_requests",
        "thaw_cold_starts_total",  # by tier
        "thaw_scale_from_zero_seconds_bucket",
        "thaw_activator_request_duration_seconds_bucket",  # latency
        "thaw_activator_requests_total",  # codes
        "thaw_replica_metrics_stale",
    }
    assert wanted <= used, sorted(wanted - used)
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
