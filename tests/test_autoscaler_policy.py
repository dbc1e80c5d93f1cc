"""The policy file: defaults, every error at once with path / value / accepted, the JSON Schema,
reload on change, and ``thaw policy`` driven as a real process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from procs import REPO, thaw_argv
from pydantic import BaseModel, ValidationError

from autoscaler.policy import AutoscalingPolicy, kpa_policy
from engine.perf_model import EnginePerf
from policy_file.load import (
    PolicyError,
    default_config_path,
    load_policy,
    parse_policy,
    policy_json_schema,
)
from policy_file.schema import ModelConfig, ThawConfig
from policy_file.watch import PolicyWatcher

MINIMAL = "models:\n  - name: m\n"


def errors_of(text: str) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "f.yaml")
    return info.value.errors


# -- defaults -------------------------------------------------------------------------------

# Knative's config-autoscaler defaults (knative/serving config/core/configmaps/autoscaler.yaml).
KNATIVE_DEFAULTS = [
    ("stable_window_s", 60.0),  # stable-window: "60s"
    ("panic_window_pct", 10.0),  # panic-window-percentage: "10.0"
    ("panic_threshold_pct", 200.0),  # panic-threshold-percentage: "200.0"
    ("max_scale_up_rate", 1000.0),  # max-scale-up-rate: "1000.0"
    ("max_scale_down_rate", 2.0),  # max-scale-down-rate: "2.0"
    ("scale_to_zero_grace_s", 30.0),  # scale-to-zero-grace-period: "30s"
    ("scale_down_delay_s", 0.0),  # scale-down-delay: "0s"
    ("activation_scale", 1),  # activation-scale: 1
    ("min_replicas", 0),  # min-scale: "0"
    ("target_concurrency_per_replica", 70.0),  # 100 x container-concurrency-target-percentage 70
]


@pytest.mark.parametrize(("name", "value"), KNATIVE_DEFAULTS)
def test_defaults_are_knatives(name: str, value: float) -> None:
    assert getattr(AutoscalingPolicy(), name) == value


def test_kpa_policy_is_knatives_defaults_with_the_llm_signals_off() -> None:
    kpa = kpa_policy(7)
    for name, value in KNATIVE_DEFAULTS:
        assert getattr(kpa, name) == value, name
    assert kpa.max_replicas == 7
    assert kpa.target_waiting_per_replica is None and kpa.target_kv_cache_usage_ratio is None
    assert kpa.initial_replicas == 0 and not kpa.forecast.enabled
    # one place: every other field is the policy's own default
    fields = set(AutoscalingPolicy.model_fields) - {
        "max_replicas",
        "target_waiting_per_replica",
        "target_kv_cache_usage_ratio",
    }
    assert all(getattr(kpa, f) == getattr(AutoscalingPolicy(), f) for f in fields)


def test_thaw_sim_help_describes_kpa_from_the_policy() -> None:
    done = thaw("sim", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    kpa = kpa_policy(1)
    assert (
        f"kpa the same decider with Knative KPA's defaults: concurrency target "
        f"{kpa.target_concurrency_per_replica:g} per replica (100 x 70 %), stable window "
        f"{kpa.stable_window_s:g} s, panic window {kpa.panic_window_s:g} s at "
        f"{kpa.panic_threshold_pct:g} %, scale-to-zero grace {kpa.scale_to_zero_grace_s:g} s; "
        "no warm pool"
    ) in text


def test_panic_window_is_a_share_of_the_stable_window() -> None:
    assert AutoscalingPolicy().panic_window_s == pytest.approx(6.0)
    assert AutoscalingPolicy(stable_window_s=120, panic_window_pct=50).panic_window_s == 60.0


def test_default_file_serves_the_tiny_model_on_vllm_at_min_zero() -> None:
    config = load_policy(default_config_path())
    (m,) = config.models
    assert (m.name, m.engine.kind, m.engine.model) == ("tiny-llama", "vllm", None)
    assert (m.autoscaling.min_replicas, m.autoscaling.max_replicas) == (0, 1)
    assert config.listen.host == "127.0.0.1"


def test_min_replicas_alone_is_enough() -> None:
    config = parse_policy("models:\n  - name: m\n    autoscaling: {min_replicas: 1}\n")
    assert config.models[0].autoscaling.initial_replicas == 0  # no effect below the minimum


def test_minimal_file_gets_every_default() -> None:
    config = parse_policy(MINIMAL)
    assert config.models[0] == ModelConfig(name="m")
    assert config.tick_s == 1.0 and config.listen.port == 8080


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for name, f in model.model_fields.items():
        assert f.description, f"{model.__name__}.{name} has no description"
        for sub in (ThawConfig, ModelConfig, AutoscalingPolicy, EnginePerf):
            if sub.__name__ in repr(f.annotation):
                _models(sub, seen)


def test_every_field_is_described_forbids_extras_and_is_frozen() -> None:
    seen: set[type[BaseModel]] = set()
    _models(ThawConfig, seen)
    import autoscaler.policy as core
    import policy_file.schema as schema

    for mod, name in (
        (schema, "ListenConfig"),
        (schema, "EngineConfig"),
        (core, "ForecastConfig"),
    ):
        _models(getattr(mod, name), seen)
    for model in seen:
        assert model.model_config.get("extra") == "forbid", model.__name__
        assert model.model_config.get("frozen") is True, model.__name__
    config = parse_policy(MINIMAL)
    with pytest.raises(ValidationError):
        config.tick_s = 2.0  # type: ignore[misc]


# -- errors ---------------------------------------------------------------------------------

BAD = [
    (
        "wrong type",
        "models:\n  - name: m\n    autoscaling: {max_replicas: lots}\n",
        ["models[0].autoscaling.max_replicas (line 3): value 'lots': must be a valid integer"],
    ),
    (
        "a boolean is not a count",
        "models:\n  - name: m\n    autoscaling: {min_replicas: true}\n",
        ["models[0].autoscaling.min_replicas (line 3): value True: must be a valid integer"],
    ),
    (
        "a Knative-style duration is not a number of seconds",
        "models:\n  - name: m\n    autoscaling: {stable_window_s: 60s}\n",
        [
            "models[0].autoscaling.stable_window_s (line 3): value '60s': must be a valid number "
            "of seconds (write 60, not '60s')"
        ],
    ),
    (
        "unknown key, with the accepted keys",
        "models:\n  - name: m\n    autoscaling: {stable_window: 60}\n",
        [
            "models[0].autoscaling.stable_window (line 3): value 60: unknown key; accepted keys: "
            "min_replicas, max_replicas"
        ],
    ),
    (
        "min > max",
        "models:\n  - name: m\n    autoscaling:\n      min_replicas: 3\n      max_replicas: 2\n",
        ["models[0].autoscaling.max_replicas (line 5): value 2: must be >= min_replicas (3)"],
    ),
    (
        "negative window",
        "models:\n  - name: m\n    autoscaling:\n      stable_window_s: -1\n",
        [
            "models[0].autoscaling.stable_window_s (line 4): value -1: must be >= 6 "
            "(accepted: [6, 3600])"
        ],
    ),
    (
        "negative max",
        "models:\n  - name: m\n    autoscaling: {max_replicas: -1}\n",
        ["models[0].autoscaling.max_replicas (line 3): value -1: must be >= 1"],
    ),
    (
        "no target enabled",
        "models:\n  - name: m\n    autoscaling:\n"
        "      target_waiting_per_replica: null\n      target_kv_cache_usage_ratio: null\n"
        "      target_concurrency_per_replica: null\n",
        ["models[0].autoscaling (line 3): every target is null; enable at least one of"],
    ),
    (
        "initial outside the bounds",
        "models:\n  - name: m\n    autoscaling: {max_replicas: 2, initial_replicas: 3}\n",
        ["models[0].autoscaling.initial_replicas (line 3): value 3: must be <= max_replicas (2)"],
    ),
    (
        "duplicate model names",
        "models:\n  - name: m\n  - name: m\n",
        ["models[1].name (line 3): value 'm': must be unique; models[0].name is the same"],
    ),
    (
        "unknown engine kind",
        "models:\n  - name: m\n    engine: {kind: tgi}\n",
        ["models[0].engine.kind (line 3): value 'tgi': must be 'vllm' or 'emulator'"],
    ),
    (
        "emulator block on a vllm engine",
        "models:\n  - name: m\n    engine: {kind: vllm, emulator: {load_time_s: 1}}\n",
        ["models[0].engine (line 3): emulator is set but kind = 'vllm'"],
    ),
    (
        "bad emulator perf field",
        "models:\n  - name: m\n    engine:\n      kind: emulator\n      emulator:\n"
        "        max_num_seqs: 0\n",
        ["models[0].engine.emulator.max_num_seqs (line 6): value 0: must be > 0"],
    ),
    (
        "no models",
        "tick_s: 1\n",
        ["models: required, missing"],
    ),
    (
        "empty model list",
        "models: []\n",
        ["models (line 1): value []: must have at least 1 item"],
    ),
    (
        "whitespace in a name",
        "models:\n  - name: my model\n",
        ["models[0].name (line 2): value 'my model': must match pattern"],
    ),
    (
        "not a mapping",
        "- a\n- b\n",
        ["<top>: value ['a', 'b']: must be a mapping with keys listen, tick_s, models"],
    ),
    ("empty file", "", ["the file is empty"]),
    (
        "YAML syntax error with its line",
        "models:\n  - name: m\n   engine: x\n",
        ["YAML syntax (line 3, column 4): expected <block end>"],
    ),
    (
        "YAML duplicate key",
        "tick_s: 1\nmodels:\n  - name: m\ntick_s: 2\n",
        ["tick_s (line 4): duplicate key; first given on line 1"],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_errors(name: str, text: str, expected: list[str]) -> None:
    got = errors_of(text)
    for want in expected:
        assert any(e.startswith(want) or want in e for e in got), (want, got)


def test_every_error_is_reported_at_once() -> None:
    text = (
        "listen: {port: 99999}\n"
        "tick_s: fast\n"
        "models:\n"
        "  - name: a\n"
        "    autoscaling: {min_replicas: 3, max_replicas: 2, stable_window_s: -5, bogus: 1}\n"
        "  - name: a\n"
        "    activator: {buffer_size: 0}\n"
    )
    got = errors_of(text)
    paths = [e.split(" ")[0].rstrip(":") for e in got]
    assert paths == [
        "listen.port",
        "tick_s",
        "models[0].autoscaling.max_replicas",
        "models[0].autoscaling.stable_window_s",
        "models[0].autoscaling.bogus",
        "models[1].activator.buffer_size",
        "models[1].name",
    ], got
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "f.yaml")
    assert str(info.value).startswith("f.yaml: 7 errors\n")


_any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(-10, 5000, allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from([*AutoscalingPolicy.model_fields, "bogus_key"]), _any_value, max_size=6
    )
)
def test_any_autoscaling_block_validates_or_names_each_bad_field(fields: dict[str, Any]) -> None:
    text = yaml.safe_dump({"models": [{"name": "m", "autoscaling": fields}]})
    try:
        config = parse_policy(text, "f.yaml")
    except PolicyError as e:
        assert e.errors
        for line in e.errors:
            assert line.startswith("models[0].autoscaling"), line
            assert "(line " in line, line
        return
    # Valid: it round-trips through YAML unchanged.
    again = parse_policy(yaml.safe_dump(config.model_dump(mode="json")), "again.yaml")
    assert again == config


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_policy(tmp_path / "missing.yaml")


# -- JSON Schema ----------------------------------------------------------------------------


def test_schema_is_valid_and_agrees_with_the_models() -> None:
    schema = policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    default = yaml.safe_load(default_config_path().read_text())
    assert not list(validator.iter_errors(default))
    bad = {"models": [{"name": "m", "autoscaling": {"bogus": 1, "max_replicas": 0}}]}
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "'bogus' was unexpected" in messages
    assert "0 is less than the minimum of 1" in messages


# -- reload on change -----------------------------------------------------------------------


def _cfg(max_replicas: int) -> str:
    return f"models:\n  - name: m\n    autoscaling: {{max_replicas: {max_replicas}}}\n"


def test_watcher_consider_keeps_the_old_policy_on_a_bad_file() -> None:
    old = parse_policy(_cfg(1))
    w = PolicyWatcher("p.yaml", old)
    same = w.consider(1, _cfg(1))
    assert (same.changed, same.config) == (False, old)
    bad = w.consider(2, _cfg(-1))
    assert not bad.changed and bad.config is old
    assert "models[0].autoscaling.max_replicas (line 3): value -1" in bad.reason
    assert "keeping the policy in force" in bad.reason
    new = w.consider(3, _cfg(2))
    assert new.changed and new.config.models[0].autoscaling.max_replicas == 2
    assert w.config is new.config
    assert not w.consider(None, None).changed


def test_watcher_poll_reloads_a_real_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "thaw.yaml"
    path.write_text(_cfg(1))
    w = PolicyWatcher(path, load_policy(path))
    assert w.poll() is None  # the file that produced the config in force

    def rewrite(text: str, tick: int) -> None:
        path.write_text(text)
        os.utime(path, ns=(tick * 10**9, tick * 10**9))  # a distinct mtime, whatever the fs

    rewrite(_cfg(3), 1)
    assert w.may_have_changed()
    new = w.poll()
    assert new is not None and new.models[0].autoscaling.max_replicas == 3
    assert not w.may_have_changed()  # the stack skips the thread hop to poll
    assert w.poll() is None
    with caplog.at_level(logging.WARNING, logger="policy_file.watch"):
        rewrite(_cfg(0), 2)
        assert w.poll() is None
        rewrite(_cfg(0), 3)  # touched again, same bad content: not logged twice
        assert w.poll() is None
    rejected = [r for r in caplog.records if "policy file rejected" in r.getMessage()]
    assert len(rejected) == 1 and "max_replicas" in rejected[0].getMessage()
    assert w.config.models[0].autoscaling.max_replicas == 3
    path.unlink()
    assert w.may_have_changed()  # poll says why it cannot
    assert w.poll() is None and w.config.models[0].autoscaling.max_replicas == 3


# -- the CLI, as a real process ---------------------------------------------------------------


def thaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        thaw_argv(*args), capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )


def test_cli_check_accepts_the_default_file() -> None:
    done = thaw("policy", "check", str(default_config_path()))
    assert done.returncode == 0, done.stderr
    assert "valid; 1 model" in done.stdout
    assert "tiny-llama: vllm (tiny Llama); replicas 0..1" in done.stdout


def test_cli_check_prints_every_error_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n"
        "  - name: m\n"
        "    autoscaling:\n"
        "      max_replicas: many\n"  # wrong type
        "      stable_window_s: -1\n"  # negative window
        "      surprise: 1\n"  # unknown key
        "  - name: n\n"
        "    autoscaling: {min_replicas: 3, max_replicas: 2}\n"  # min > max
    )
    done = thaw("policy", "check", str(bad))
    assert done.returncode == 1
    assert done.stdout == ""
    for want in (
        f"{bad}: 4 errors",
        "models[0].autoscaling.max_replicas (line 4): value 'many': must be a valid integer",
        "models[0].autoscaling.stable_window_s (line 5): value -1: must be >= 6",
        "models[0].autoscaling.surprise (line 6): value 1: unknown key; accepted keys:",
        "models[1].autoscaling.max_replicas (line 8): value 2: must be >= min_replicas (3)",
    ):
        assert want in done.stderr, done.stderr


def test_cli_schema_and_show_default_round_trip(tmp_path: Path) -> None:
    done = thaw("policy", "schema")
    assert done.returncode == 0, done.stderr
    schema: dict[str, Any] = json.loads(done.stdout)
    assert schema["title"] == "Thaw policy file"
    assert "AutoscalingPolicy" in schema["$defs"]
    shown = thaw("policy", "show-default")
    assert shown.returncode == 0, shown.stderr
    copy = tmp_path / "copy.yaml"
    copy.write_text(shown.stdout)
    assert load_policy(copy) == load_policy(default_config_path())
    helped = thaw("policy", "--help")
    assert "thaw policy check thaw.yaml" in helped.stdout


def test_min_above_the_default_max_is_an_error_on_max() -> None:
    # Found by hypothesis in CI: field validators do not run on defaults unless asked to.
    with pytest.raises(PolicyError) as e:
        parse_policy("models:\n  - name: m\n    autoscaling: {min_replicas: 2}\n", "f.yaml")
    assert list(e.value.errors) == [
        "models[0].autoscaling.max_replicas (line 3): value 1: must be >= min_replicas (2)"
    ]
