"""One readable line per model (and the cluster's pools), for ``thaw policy check``."""

from __future__ import annotations

from policy_file.schema import ThawConfig


def summarize(config: ThawConfig) -> list[str]:
    """One readable line per model, for ``thaw policy check``."""
    out: list[str] = []
    for m in config.models:
        a = m.autoscaling
        targets = [
            f"{label} {value:g}"
            for label, value in (
                ("waiting/replica", a.target_waiting_per_replica),
                ("kv usage", a.target_kv_cache_usage_ratio),
                ("concurrency/replica", a.target_concurrency_per_replica),
            )
            if value is not None
        ]
        engine = m.engine.kind + (f" {m.engine.model}" if m.engine.model else "")
        if m.engine.kind == "vllm" and not m.engine.model:
            engine += " (tiny Llama)"
        out.append(
            f"{m.name}: {engine}; replicas {a.min_replicas}..{a.max_replicas}; "
            f"targets {', '.join(targets)}; stable {a.stable_window_s:g} s, "
            f"panic {a.panic_window_s:g} s at {a.panic_threshold_pct:g} %; "
            f"to zero after {a.scale_to_zero_grace_s:g} s idle"
        )
    if config.cluster is not None:
        pools = ", ".join(
            f"{p.name} ({p.gpus_per_replica} x {p.gpu_type}, {p.gpu_memory_bytes / 1e9:.0f} GB, "
            f"${p.cost_per_hour_usd:g}/GPU-h, max {p.max_replicas})"
            for p in config.cluster.pools
        )
        out.append(f"cluster: namespace {config.cluster.namespace}; pools {pools}")
    return out
