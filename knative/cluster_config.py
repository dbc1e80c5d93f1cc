"""Knative's cluster-wide settings that a PodAutoscaler controller must honour, parsed and checked.

Pure: the ``data`` of two ConfigMaps in ``knative-serving`` in, one frozen
:class:`KnativeConfig` out (or :class:`KnativeConfigError` naming the key, the value and what is
accepted). The controller watches both and re-parses on every change; a bad edit keeps the last
good settings (Knative's own controllers do the same) and is logged.

- ``config-autoscaler`` (``pkg/autoscaler/config/config.go``, ``NewConfigFromMap`` and
  ``validate``): ``enable-scale-to-zero``, ``allow-zero-initial-scale``, ``initial-scale``,
  ``min-scale``, ``max-scale``, ``max-scale-limit``, ``scale-to-zero-grace-period``,
  ``scale-to-zero-pod-retention-period``, ``target-burst-capacity``, ``activator-capacity``,
  ``container-concurrency-target-default``, with Knative's defaults and ranges. Keys that only
  Knative's own decider reads (windows, rates, targets) are Thaw's policy file's business.
- ``config-deployment`` (``pkg/deployment/config.go``): ``progress-deadline`` (600 s), how long a
  revision may take to become ready; KPA waits that long (plus 30 s) before it gives up
  activating (``kpa/scaler.go``, ``activationTimeoutBuffer``).

Durations are Go's (``30s``, ``1m30s``, ``500ms``), as Knative parses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from kernel.config_errors import problem

AUTOSCALER_CONFIGMAP = "config-autoscaler"
DEPLOYMENT_CONFIGMAP = "config-deployment"
KNATIVE_NAMESPACE = "knative-serving"


class KnativeConfigError(ValueError):
    """A Knative ConfigMap holds a value Knative itself would refuse."""


@dataclass(frozen=True)
class KnativeConfig:
    """What Thaw's controller reads of Knative's cluster settings (Knative's defaults)."""

    enable_scale_to_zero: bool = True
    allow_zero_initial_scale: bool = False
    initial_scale: int = 1
    min_scale: int = 0
    #: 0: unbounded.
    max_scale: int = 0
    #: 0: no limit.
    max_scale_limit: int = 0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_period_s: float = 0.0
    #: -1: the activator always in the path; 0: only at zero.
    target_burst_capacity: float = 211.0
    activator_capacity: float = 100.0
    container_concurrency_target_default: float = 100.0
    progress_deadline_s: float = 600.0


_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def go_duration_s(text: str) -> float:
    """Go's ``time.ParseDuration`` (``1h2m3.5s``, ``-30s``, ``0``) in seconds; ValueError else."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(text)
        total += float(m.group(1)) * _UNITS_S[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError(text)
    return sign * total


def _bool(text: str) -> bool:
    # Knative's cm.AsBool: strconv.ParseBool.
    t = text.strip()
    if t in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if t in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def _int(text: str) -> int:
    return int(text.strip(), 10)


def _float(text: str) -> float:
    return float(text.strip())


_AUTOSCALER_KEYS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "enable-scale-to-zero": ("enable_scale_to_zero", _bool, "a boolean (true or false)"),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", _bool, "a boolean (true or false)"),
    "initial-scale": ("initial_scale", _int, "an integer"),
    "min-scale": ("min_scale", _int, "an integer"),
    "max-scale": ("max_scale", _int, "an integer"),
    "max-scale-limit": ("max_scale_limit", _int, "an integer"),
    "scale-to-zero-grace-period": (
        "scale_to_zero_grace_period_s",
        go_duration_s,
        "a Go duration, e.g. 30s",
    ),
    "scale-to-zero-pod-retention-period": (
        "scale_to_zero_pod_retention_period_s",
        go_duration_s,
        "a Go duration, e.g. 1m",
    ),
    "target-burst-capacity": ("target_burst_capacity", _float, "a number"),
    "activator-capacity": ("activator_capacity", _float, "a number"),
    "container-concurrency-target-default": (
        "container_concurrency_target_default",
        _float,
        "a number",
    ),
}


def _err(key: str, value: Any, accepted: str, cm: str = AUTOSCALER_CONFIGMAP) -> KnativeConfigError:
    return KnativeConfigError(problem(f"{cm} {key}", value, accepted))


def parse_autoscaler(data: Mapping[str, str], base: KnativeConfig | None = None) -> KnativeConfig:
    """``config-autoscaler``'s data over Knative's defaults (``base``'s other fields kept)."""
    out = base if base is not None else KnativeConfig()
    defaults = KnativeConfig()
    values: dict[str, Any] = {
        f.name: getattr(defaults, f.name) for f in fields(KnativeConfig) if f.name in _NAMES
    }
    for key, (name, parse, accepted) in _AUTOSCALER_KEYS.items():
        if key in data:
            try:
                values[name] = parse(str(data[key]))
            except ValueError as e:
                raise _err(key, data[key], f"must be {accepted}") from e
    cfg = replace(out, **values)
    _validate(cfg, data)
    return cfg


_NAMES = {name for name, _, _ in _AUTOSCALER_KEYS.values()}


def _validate(c: KnativeConfig, data: Mapping[str, str]) -> None:
    """Knative's ``validate`` (config.go), for the keys read here."""

    def raw(key: str, value: Any) -> Any:
        return data.get(key, value)

    if c.scale_to_zero_grace_period_s <= 0:
        raise _err(
            "scale-to-zero-grace-period",
            raw("scale-to-zero-grace-period", c.scale_to_zero_grace_period_s),
            "must be positive",
        )
    if c.scale_to_zero_pod_retention_period_s < 0:
        raise _err(
            "scale-to-zero-pod-retention-period",
            raw("scale-to-zero-pod-retention-period", c.scale_to_zero_pod_retention_period_s),
            "cannot be negative",
        )
    if c.target_burst_capacity < 0 and c.target_burst_capacity != -1:
        raise _err(
            "target-burst-capacity",
            raw("target-burst-capacity", c.target_burst_capacity),
            "must be either non-negative or -1 (for unlimited)",
        )
    if c.activator_capacity < 1:
        raise _err(
            "activator-capacity", raw("activator-capacity", c.activator_capacity), "must be >= 1"
        )
    if c.container_concurrency_target_default < 0.01:
        raise _err(
            "container-concurrency-target-default",
            raw("container-concurrency-target-default", c.container_concurrency_target_default),
            "must be >= 0.01",
        )
    if c.initial_scale < 0 or (c.initial_scale == 0 and not c.allow_zero_initial_scale):
        raise _err(
            "initial-scale",
            raw("initial-scale", c.initial_scale),
            "must be at least 0 (or at least 1 when allow-zero-initial-scale is false)",
        )
    if c.min_scale < 0:
        raise _err("min-scale", raw("min-scale", c.min_scale), "must be at least 0")
    if c.max_scale_limit < 0:
        raise _err(
            "max-scale-limit", raw("max-scale-limit", c.max_scale_limit), "must be at least 0"
        )
    low = 1 if c.max_scale_limit > 0 else 0
    if c.max_scale < low or (c.max_scale_limit > 0 and c.max_scale > c.max_scale_limit):
        raise _err(
            "max-scale",
            raw("max-scale", c.max_scale),
            f"must be in [{low}, max-scale-limit ({c.max_scale_limit})]",
        )
    if c.max_scale > 0 and c.min_scale > c.max_scale:
        raise _err(
            "min-scale",
            raw("min-scale", c.min_scale),
            f"must be <= max-scale ({c.max_scale})",
        )


def parse_deployment(data: Mapping[str, str], base: KnativeConfig | None = None) -> KnativeConfig:
    """``config-deployment``'s ``progress-deadline`` over ``base`` (default 600 s)."""
    out = base if base is not None else KnativeConfig()
    key = "progress-deadline"
    if key not in data:
        return replace(out, progress_deadline_s=KnativeConfig().progress_deadline_s)
    try:
        deadline_s = go_duration_s(str(data[key]))
    except ValueError as e:
        raise _err(key, data[key], "must be a Go duration, e.g. 600s", DEPLOYMENT_CONFIGMAP) from e
    if deadline_s <= 0:
        raise _err(key, data[key], "must be positive", DEPLOYMENT_CONFIGMAP)
    return replace(out, progress_deadline_s=deadline_s)


def knative_config(
    autoscaler: Mapping[str, str] | None, deployment: Mapping[str, str] | None
) -> KnativeConfig:
    """Both ConfigMaps' data (None: the map is absent: Knative's defaults)."""
    return parse_deployment(deployment or {}, parse_autoscaler(autoscaler or {}))
