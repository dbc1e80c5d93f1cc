"""One readable line per model (and the cluster's pools), for ``thaw policy check``; with a warm
pool, what sleeping saves where the models run: GPU memory (and so GPU-hours) only where engines
share a GPU, start latency everywhere."""

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
    out += warm_pool_lines(config)
    if config.cluster is not None:
        pools = ", ".join(
            f"{p.name} ({p.gpus_per_replica} x {p.gpu_type}, {p.gpu_memory_bytes / 1e9:.0f} GB, "
            f"${p.cost_per_hour_usd:g}/GPU-h, max {p.max_replicas}"
            + (f", shared: {p.share} engines per GPU" if p.shared else "")
            + ")"
            for p in config.cluster.pools
        )
        out.append(f"cluster: namespace {config.cluster.namespace}; pools {pools}")
    return out


#: Said wherever a warm pool runs without GPU sharing.
NO_SHARING = (
    "a sleeping engine still holds its whole GPU, so sleeping saves start latency but no GPU-hours"
)


def warm_pool_lines(config: ThawConfig, *, cluster: bool = True) -> list[str]:
    """What the models' warm pools save under ``thaw up`` and (``cluster``) on the cluster's
    pools; nothing when no model has a warm pool."""
    warm = [m.name for m in config.models if m.warm_pool.enabled]
    if not warm:
        return []
    names = ", ".join(warm)
    out: list[str] = []
    if config.gpu is not None:
        out.append(
            f"warm pool ({names}) on thaw up: the models share one GPU of "
            f"{config.gpu.memory_bytes / 1e9:.0f} GB; the GPU-memory arbiter puts one model's "
            "engine to sleep before it wakes another's, so sleepers free GPU memory"
        )
    else:
        out.append(
            f"warm pool ({names}) on thaw up: no gpu: section, so each engine counts as having "
            f"a GPU of its own: {NO_SHARING}"
        )
    if cluster and config.cluster is not None:
        unshared = [p.name for p in config.cluster.pools if not p.shared]
        if unshared:
            which = (
                "pools " + ", ".join(unshared) + " are"
                if len(unshared) > 1
                else (f"pool {unshared[0]} is")
            )
            out.append(f"warm pool on the cluster: {which} not shared (share 1): {NO_SHARING}")
    return out
