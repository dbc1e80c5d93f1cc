"""Which runtime honours which policy setting: one row per key of the policy file, and the
refusal of a setting a runtime would otherwise ignore.

The three runtimes read the same file (:class:`Runtime`): the local stack (``thaw up``), the
Knative runtime (``thaw knative controller`` and ``render``, which share one policy ConfigMap; the
controller also chooses the gateway's routes) and the simulator (``thaw sim --config``). For
each runtime a key is:

- **honoured** — the runtime acts on it (the note says which part, where it matters);
- **refused** — the runtime cannot act on it yet, so a file that sets it to anything but its
  default is refused at load and at reload, naming the key path, the value and why
  (:func:`refusals`); the default is accepted, since it asks for nothing;
- **not this runtime's** — the key configures another runtime's infrastructure (``cluster:`` for
  ``thaw up``, ``cache:`` on a cluster, the engines for the simulator, whose fleet file describes
  them), so one file can serve every runtime; the note says whose it is;
- **shown only** — a description for people (``thaw policy check`` shows it) that no runtime acts
  on yet.

:data:`TABLE` is the whole answer, read from the code of each runtime (``local_stack/``,
``knative/`` with ``thaw/cmd_knative*.py``, ``sim/runner.py`` with ``thaw/cmd_sim.py``); a test
keeps it equal to the schema's keys (a new key without a row fails) and the README's table equal
to :func:`markdown_table`. Pure: no I/O.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kernel.config_errors import Lines, Loc, show, where
from policy_file.schema import ThawConfig


class Runtime(enum.Enum):
    """A program that reads the policy file; the value is how users call it."""

    LOCAL = "thaw up"
    KNATIVE = "thaw knative"
    SIM = "thaw sim"


class Status(enum.Enum):
    HONOURED = "honoured"
    REFUSED = "refused"
    NOT_THIS_RUNTIMES = "not this runtime's"
    SHOWN_ONLY = "shown only"


@dataclass(frozen=True)
class Support:
    """How one runtime treats one key: the status and a short note (why, whose, or which part)."""

    status: Status
    note: str = ""


@dataclass(frozen=True)
class Row:
    """One key of the policy file (``models[].autoscaling.min_replicas``) in each runtime."""

    key: str
    local: Support
    knative: Support
    sim: Support

    def support(self, runtime: Runtime) -> Support:
        return {Runtime.LOCAL: self.local, Runtime.KNATIVE: self.knative, Runtime.SIM: self.sim}[
            runtime
        ]


YES = Support(Status.HONOURED)


def _yes(note: str) -> Support:
    return Support(Status.HONOURED, note)


def _refused(why: str) -> Support:
    return Support(Status.REFUSED, why)


def _theirs(whose: str) -> Support:
    return Support(Status.NOT_THIS_RUNTIMES, whose)


# The reasons, each written once.
_LISTEN_SIM = _theirs("the front door's address; the simulator has no sockets")
_ENGINE_SIM = _theirs("the fleet file (--fleet) describes the simulated engines")
_CACHE_KNATIVE = _theirs(
    "the local stack's cache; on a cluster the model-cache DaemonSet (manifests/) and "
    "cluster.model_cache"
)
_CACHE_SIM = _theirs("the simulator loads weights from --start-tier at the fleet's bandwidths")
_CLUSTER_LOCAL = _theirs("the Knative runtime's (thaw knative render places models on its pools)")
_CLUSTER_SIM = _theirs("the Knative runtime's; the fleet file (--fleet) describes simulated pools")
_STARTUP_KNATIVE = _yes("render: serving.knative.dev/progress-deadline")
_FORECAST_KNATIVE = _refused("the Knative controller does not run the forecaster yet")
_WARM_KNATIVE = _yes("controller: the GPU-memory arbiter sleeps and wakes engine pods")
_GPU_KNATIVE = _theirs(
    "the local stack's one GPU; on a cluster cluster.pools[] (and their share) describe the GPUs"
)
_GPU_SIM = _theirs("the fleet file (--fleet) describes the simulated GPUs")
_WARM_SIM = _yes(
    "a sleeper of an unshared pool keeps (and is billed for) its GPU; on a pool with share > 1 "
    "the GPU-memory arbiter decides who is awake"
)
_SHARE_SIM = _theirs(
    "the fleet file's pools[].share is the simulator's: engines per GPU, the arbiter's sleeps "
    "and wakes, a GPU billed while any engine is on it"
)
_FRONT_SIM = _refused(
    "the simulated activator holds every request until a replica is ready: no buffer limit, "
    "no wait timeout, no request bodies"
)
_SHOWN = Support(Status.SHOWN_ONLY, "shown by thaw policy check; nothing places by it")
_LISTEN_KNATIVE = _theirs(
    "the local front door's address; on a cluster the gateway listens where "
    "manifests/gateway.yaml says (thaw knative gateway --host/--port)"
)
_BUFFER_KNATIVE = _refused(
    "on a cluster Knative's activator holds the requests of a model at zero: its own queue, "
    "and a request waits at most the revision's timeoutSeconds (cluster.request_timeout_s)"
)
_CONCURRENCY_KNATIVE = _refused(
    "on a cluster the gateway balances a revision's pods by least requests, and Knative's "
    "queue-proxy and activator cap requests per pod by the revision's containerConcurrency, "
    "which thaw knative render does not set from it yet"
)
_UPSTREAM_KNATIVE = _refused(
    "on a cluster the gateway (Envoy) opens pod connections with its own connect timeout and "
    "bounds a whole request by cluster.request_timeout_s; a revision's responseStartTimeoutSeconds "
    "and idleTimeoutSeconds are Knative's, which thaw knative render does not set from it yet"
)
_SERVER_KNATIVE = _refused(
    "on a cluster clients connect to the gateway (Envoy, manifests/gateway.yaml), which keeps "
    "its own client timeouts and keep-alive and sends no Retry-After of its own; "
    "thaw knative gateway does not map it yet"
)
_CONCURRENCY_SIM = _refused(
    "the simulated activator sends each request to the least-loaded ready replica at once: no "
    "per-replica cap (the engine's max_num_seqs queues the rest)"
)
_UPSTREAM_SIM = _refused(
    "simulated replicas always accept and answer: no connect, first-byte or idle timeout, no "
    "ejection"
)
_SERVER_SIM = _refused(
    "the simulator has no client connections: no header or body reads, no keep-alive, no "
    "Retry-After"
)
_PLACE = "render, and the gateway's choice of pool (controller)"

#: Every key of the policy file, in the schema's order.
TABLE: tuple[Row, ...] = (
    Row("listen.host", YES, _LISTEN_KNATIVE, _LISTEN_SIM),
    Row("listen.port", YES, _LISTEN_KNATIVE, _LISTEN_SIM),
    Row("tick_s", YES, _yes("controller"), YES),
    Row("models[].name", YES, YES, YES),
    Row("models[].engine.kind", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.model", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.args", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.env", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.startup_timeout_s", YES, _STARTUP_KNATIVE, _ENGINE_SIM),
    Row("models[].engine.emulator.load_time_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.prefill_tokens_per_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.decode_base_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.decode_per_seq_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.kv_capacity_tokens", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.max_num_seqs", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.max_model_len_tokens", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.sleep_level1_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.sleep_level2_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.wake_level1_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.emulator.wake_level2_s", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].engine.gpu_memory_utilization", YES, _yes("render"), _ENGINE_SIM),
    Row("models[].autoscaling.min_replicas", YES, _yes("per Service; render, controller"), YES),
    Row("models[].autoscaling.max_replicas", YES, _yes("per Service; render, controller"), YES),
    Row("models[].autoscaling.initial_replicas", YES, _yes("per Service; render, controller"), YES),
    Row("models[].autoscaling.target_waiting_per_replica", YES, YES, YES),
    Row("models[].autoscaling.target_kv_cache_usage_ratio", YES, YES, YES),
    Row("models[].autoscaling.target_concurrency_per_replica", YES, YES, YES),
    Row("models[].autoscaling.stable_window_s", YES, YES, YES),
    Row("models[].autoscaling.panic_window_pct", YES, YES, YES),
    Row("models[].autoscaling.panic_threshold_pct", YES, YES, YES),
    Row("models[].autoscaling.max_scale_up_rate", YES, YES, YES),
    Row("models[].autoscaling.max_scale_down_rate", YES, YES, YES),
    Row("models[].autoscaling.scale_down_delay_s", YES, YES, YES),
    Row("models[].autoscaling.scale_to_zero_grace_s", YES, YES, YES),
    Row("models[].autoscaling.activation_scale", YES, YES, YES),
    Row("models[].autoscaling.metrics_stale_after_s", YES, YES, YES),
    Row("models[].autoscaling.forecast.enabled", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.quantile", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.method", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.interval_s", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.season_s", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.min_history", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.min_confidence", YES, _FORECAST_KNATIVE, YES),
    Row("models[].autoscaling.forecast.horizon_s", YES, _FORECAST_KNATIVE, YES),
    Row("models[].activator.buffer_size", YES, _BUFFER_KNATIVE, _FRONT_SIM),
    Row("models[].activator.buffer_max_bytes", YES, _BUFFER_KNATIVE, _FRONT_SIM),
    Row("models[].activator.wait_timeout_s", YES, _BUFFER_KNATIVE, _FRONT_SIM),
    Row("models[].activator.max_body_bytes", YES, _yes("gateway: 413"), _FRONT_SIM),
    Row(
        "models[].activator.max_concurrency_per_replica",
        YES,
        _CONCURRENCY_KNATIVE,
        _CONCURRENCY_SIM,
    ),
    Row("models[].activator.upstream_connect_timeout_s", YES, _UPSTREAM_KNATIVE, _UPSTREAM_SIM),
    Row("models[].activator.upstream_first_byte_timeout_s", YES, _UPSTREAM_KNATIVE, _UPSTREAM_SIM),
    Row("models[].activator.upstream_idle_timeout_s", YES, _UPSTREAM_KNATIVE, _UPSTREAM_SIM),
    Row("models[].warm_pool.enabled", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].warm_pool.sleep_level", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].warm_pool.max_sleeping", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].warm_pool.sleep_ttl_s", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].warm_pool.host_ram_budget_bytes", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].warm_pool.weights_bytes", YES, _WARM_KNATIVE, _WARM_SIM),
    Row("models[].weights_bytes", _CLUSTER_LOCAL, _yes(_PLACE), _CLUSTER_SIM),
    Row("models[].pools", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("activator.header_timeout_s", YES, _SERVER_KNATIVE, _SERVER_SIM),
    Row("activator.body_timeout_s", YES, _SERVER_KNATIVE, _SERVER_SIM),
    Row("activator.keepalive_timeout_s", YES, _SERVER_KNATIVE, _SERVER_SIM),
    Row("activator.retry_after_s", YES, _SERVER_KNATIVE, _SERVER_SIM),
    Row("cache.dir", YES, _CACHE_KNATIVE, _CACHE_SIM),
    Row("cache.budget_bytes", YES, _CACHE_KNATIVE, _CACHE_SIM),
    Row("cache.s3_endpoint_url", YES, _CACHE_KNATIVE, _CACHE_SIM),
    Row("cache.s3_region", YES, _CACHE_KNATIVE, _CACHE_SIM),
    Row("cluster.namespace", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.image", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.thaw_image", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.request_timeout_s", _CLUSTER_LOCAL, _yes("render, gateway"), _CLUSTER_SIM),
    Row("cluster.pools[].name", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].gpu_type", _CLUSTER_LOCAL, _SHOWN, _CLUSTER_SIM),
    Row("cluster.pools[].gpu_memory_bytes", _CLUSTER_LOCAL, _yes(_PLACE), _CLUSTER_SIM),
    Row("cluster.pools[].gpus_per_replica", _CLUSTER_LOCAL, _yes(_PLACE), _CLUSTER_SIM),
    Row("cluster.pools[].gpu_resource", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].node_selector", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].tolerations[].key", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].tolerations[].operator", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].tolerations[].value", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].tolerations[].effect", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.pools[].cost_per_hour_usd", _CLUSTER_LOCAL, _yes(_PLACE), _CLUSTER_SIM),
    Row("cluster.pools[].max_replicas", _CLUSTER_LOCAL, _yes(_PLACE), _CLUSTER_SIM),
    Row(
        "cluster.pools[].share",
        _CLUSTER_LOCAL,
        _yes("render: one GPU slice per engine pod; controller: the GPU-memory arbiter per GPU"),
        _SHARE_SIM,
    ),
    Row("cluster.model_cache.host_path", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("cluster.model_cache.url", _CLUSTER_LOCAL, _yes("render"), _CLUSTER_SIM),
    Row("gpu.memory_bytes", YES, _GPU_KNATIVE, _GPU_SIM),
    Row("gpu.host_ram_budget_bytes", YES, _GPU_KNATIVE, _GPU_SIM),
)

_BY_KEY: dict[str, Row] = {row.key: row for row in TABLE}


def row(key: str) -> Row:
    """The row of ``key`` (``models[].autoscaling.min_replicas``); KeyError if it has none."""
    return _BY_KEY[key]


def honoured_by(key: str) -> list[Runtime]:
    """The runtimes that honour ``key``."""
    r = row(key)
    return [rt for rt in Runtime if r.support(rt).status is Status.HONOURED]


# -- the schema's keys -----------------------------------------------------------------------


def _inner_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model inside ``X``, ``X | None`` or ``tuple[X, ...]``, whether it is a sequence)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in typing.get_args(annotation):
            inner, many = _inner_model(arg)
            if inner is not None:
                return inner, many or origin is tuple
    return None, False


def schema_keys(model: type[BaseModel] = ThawConfig, prefix: str = "") -> list[str]:
    """Every leaf key path of the policy file's schema, in declaration order (``[]`` marks a
    list of sections)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        inner, many = _inner_model(field.annotation)
        key = prefix + name
        if inner is None:
            out.append(key)
        else:
            out += schema_keys(inner, key + ("[]." if many else "."))
    return out


def _leaves(
    model: BaseModel, loc: Loc = (), prefix: str = ""
) -> Iterator[tuple[Loc, str, Any, FieldInfo]]:
    """(place, table key, value, field) of every leaf set in a validated config."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        inner, _ = _inner_model(field.annotation)
        key = prefix + name
        if inner is None:
            yield (*loc, name), key, value, field
        elif isinstance(value, BaseModel):
            yield from _leaves(value, (*loc, name), key + ".")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                yield from _leaves(item, (*loc, name, i), key + "[].")


# -- refusals --------------------------------------------------------------------------------


def refusals(
    config: ThawConfig, runtime: Runtime, lines: Lines | None = None, data: Any = None
) -> list[str]:
    """One line per setting of ``config`` that ``runtime`` refuses: a key it does not honour set
    to anything but the key's default; each line names the key path, the value (as written in
    ``data``, the raw document, when given), why, and the runtimes that honour it."""
    out: list[str] = []
    for loc, key, value, field in _leaves(config):
        support = row(key).support(runtime)
        if support.status is not Status.REFUSED or field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if value == default:
            continue
        others = ", ".join(rt.value for rt in honoured_by(key))
        given = _given(data, loc, value)
        out.append(
            f"{where(loc, lines)}: value {show(given)}: {runtime.value} does not honour it: "
            f"{support.note}; accepted here: its default, {show(default)} "
            f"(honoured by: {others or 'no runtime'})"
        )
    return out


def _given(data: Any, loc: Loc, default: Any) -> Any:
    """The value at ``loc`` in the raw document, else ``default``."""
    for part in loc:
        if isinstance(part, int) and isinstance(data, list) and part < len(data):
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return default
    return data


# -- the README's table ----------------------------------------------------------------------

_HEADER = ("key", *(f"`{rt.value}`" for rt in Runtime))
_LEGEND = (
    "yes: honoured. **refused**: set to anything but its default, the runtime refuses the file "
    "at load and at reload, naming the key, the value and why. —: another runtime's setting, "
    "accepted and left to it. shown only: a description no runtime acts on yet."
)


def _cell(s: Support, notes: Mapping[str, str]) -> str:
    if s.status is Status.HONOURED:
        return f"yes ({s.note})" if s.note else "yes"
    mark = {Status.REFUSED: "**refused**", Status.NOT_THIS_RUNTIMES: "—"}.get(
        s.status, "shown only"
    )
    return f"{mark} ({notes[s.note]})"


def markdown_table() -> str:
    """The README's table: consecutive keys of one section with the same support share a line;
    reasons are lettered below the table."""
    notes: dict[str, str] = {}
    for r in TABLE:
        for rt in Runtime:
            s = r.support(rt)
            if s.status is not Status.HONOURED and s.note not in notes:
                notes[s.note] = chr(ord("a") + len(notes))
    groups: list[tuple[str, list[str], Row]] = []
    for r in TABLE:
        parent, _, leaf = r.key.rpartition(".")
        same = (r.local, r.knative, r.sim)
        if (
            groups
            and groups[-1][0] == parent
            and ((groups[-1][2].local, groups[-1][2].knative, groups[-1][2].sim) == same)
        ):
            groups[-1][1].append(leaf)
        else:
            groups.append((parent, [leaf], r))
    lines = [
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    for parent, leaves, r in groups:
        dot = f"{parent}." if parent else ""
        key = f"`{dot}{leaves[0]}`" if len(leaves) == 1 else f"`{dot}{{{', '.join(leaves)}}}`"
        cells = [_cell(r.support(rt), notes) for rt in Runtime]
        lines.append("| " + " | ".join([key, *cells]) + " |")
    lines += ["", _LEGEND, ""]
    lines += [f"- ({letter}) {note}." for note, letter in notes.items()]
    return "\n".join(lines) + "\n"


__all__ = [
    "TABLE",
    "YES",
    "Row",
    "Runtime",
    "Status",
    "Support",
    "honoured_by",
    "markdown_table",
    "refusals",
    "row",
    "schema_keys",
]
