"""Which runtime honours which policy key: the table covers the schema, the README shows the
table, and each runtime refuses — at load, at reload, through its real command — a key it does
not honour, naming the key path, the value and why."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from procs import REPO, thaw_argv

from kernel.config_errors import ConfigFileError
from policy_file.load import PolicyError, default_config_path, load_policy, parse_policy
from policy_file.schema import ThawConfig
from policy_file.support import (
    TABLE,
    Runtime,
    Status,
    markdown_table,
    refusals,
    schema_keys,
)
from policy_file.watch import PolicyWatcher

README = (REPO / "README.md").read_text(encoding="utf-8")


# -- the table -------------------------------------------------------------------------------


def test_every_key_of_the_schema_has_one_row_in_order() -> None:
    keys = schema_keys()
    assert len(keys) == len(set(keys)) > 70
    assert [r.key for r in TABLE] == keys  # a new key without a row fails here


def test_schema_keys_follow_nested_sections_and_lists() -> None:
    keys = schema_keys()
    for key in (
        "listen.port",
        "models[].autoscaling.forecast.horizon_s",
        "models[].engine.emulator.max_num_seqs",
        "cluster.pools[].tolerations[].effect",
        "models[].pools",  # a list of names is one key
        "models[].engine.env",  # a mapping of names is one key
    ):
        assert key in keys, key
    assert "models[].autoscaling" not in keys  # sections are not keys, their leaves are


def test_a_refusable_key_has_a_default_and_every_exception_says_why() -> None:
    fields = {k: f for k, f in _fields(ThawConfig, "")}
    for row in TABLE:
        for runtime in Runtime:
            s = row.support(runtime)
            if s.status is not Status.HONOURED:
                assert s.note, (row.key, runtime)
            if s.status is Status.REFUSED:
                assert not fields[row.key].is_required(), row.key  # the default is accepted


def _fields(model: type, prefix: str) -> list[tuple[str, object]]:
    from policy_file.support import _inner_model

    out: list[tuple[str, object]] = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        inner, many = _inner_model(field.annotation)
        if inner is None:
            out.append((prefix + name, field))
        else:
            out += _fields(inner, prefix + name + ("[]." if many else "."))
    return out


def test_the_local_stack_honours_all_its_own_keys() -> None:
    # thaw up runs every setting that is not another runtime's: nothing is refused there.
    for row in TABLE:
        assert row.local.status in (Status.HONOURED, Status.NOT_THIS_RUNTIMES), row.key
        if row.local.status is Status.NOT_THIS_RUNTIMES:
            assert row.key.startswith(("cluster.", "models[].pools", "models[].weights_bytes"))


def test_the_readme_table_is_the_codes() -> None:
    block = re.search(r"<!-- policy-support:[^\n]*-->\n(.*?)<!-- /policy-support -->", README, re.S)
    assert block is not None, "README.md lost its policy-support markers"
    assert block.group(1) == markdown_table()


def test_the_readme_refusal_example_is_what_the_knative_runtime_says() -> None:
    example = re.search(r"default, e\.g\.\n\n```\n(.*?)```", README, re.S)
    assert example is not None
    text = (
        "listen: {port: 8080}\n"
        "tick_s: 1\n"
        "models:\n"
        "  - name: m\n"
        "    engine: {kind: emulator}\n"
        "    autoscaling:\n"
        "      max_replicas: 2\n"
        "      forecast:\n"
        "        enabled: true\n"
    )
    (line,) = errors_of(text, Runtime.KNATIVE)
    assert " ".join(example.group(1).split()) == line


# -- refusals at load --------------------------------------------------------------------------


def errors_of(text: str, runtime: Runtime | None) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "f.yaml", runtime)
    return info.value.errors


CLUSTER_FILE = """\
models:
  - name: m
    engine: {kind: emulator, startup_timeout_s: 60}
    autoscaling:
      forecast: {enabled: true, quantile: 0.9}
    warm_pool: {enabled: true, sleep_ttl_s: 600}
    activator: {buffer_size: 7}
    weights_bytes: 1000
    pools: [a]
cache: {dir: /tmp/x}
cluster:
  pools: [{name: a, gpu_type: x, gpu_memory_bytes: 2000, cost_per_hour_usd: 1, max_replicas: 1}]
"""


def test_knative_refuses_only_non_default_values_of_what_it_does_not_honour() -> None:
    # engine.startup_timeout_s (60) is honoured: render writes it as the progress deadline.
    assert errors_of(CLUSTER_FILE, Runtime.KNATIVE) == (
        "models[0].autoscaling.forecast.enabled (line 5): value True: thaw knative does not "
        "honour it: the Knative controller does not run the forecaster yet; accepted here: its "
        "default, False (honoured by: thaw up, thaw sim)",
        # quantile 0.9 is the default: asking for nothing, it is accepted
        "models[0].activator.buffer_size (line 7): value 7: thaw knative does not honour it: on "
        "a cluster Knative's activator holds the requests of a model at zero: its own queue, "
        "and a request waits at most the revision's timeoutSeconds (cluster.request_timeout_s); "
        "accepted here: its default, 10000 (honoured by: thaw up)",
        # warm_pool (line 6) is honoured: the controller sleeps and wakes engine pods.
    )


def test_the_simulator_refuses_front_door_limits_and_leaves_the_rest_to_others() -> None:
    (line,) = errors_of(CLUSTER_FILE, Runtime.SIM)
    assert line == (
        "models[0].activator.buffer_size (line 7): value 7: thaw sim does not honour it: the "
        "simulated activator holds every request until a replica is ready: no buffer limit, no "
        "wait timeout, no request bodies; accepted here: its default, 10000 (honoured by: thaw up)"
    )


FRONT_DOOR_FILE = """\
models:
  - name: m
    activator:
      buffer_max_bytes: 2097152
      max_body_bytes: 2048
      max_concurrency_per_replica: 8
      upstream_connect_timeout_s: 1
      upstream_first_byte_timeout_s: 30
      upstream_idle_timeout_s: 10
activator:
  header_timeout_s: 5
  body_timeout_s: 5
  keepalive_timeout_s: 5
  retry_after_s: 2
"""


def _refused_keys(runtime: Runtime) -> list[str]:
    return [line.split(" (line")[0] for line in errors_of(FRONT_DOOR_FILE, runtime)]


def test_the_front_doors_limits_are_the_local_stacks_alone() -> None:
    # On a cluster the gateway and Knative own buffering, upstream and client timeouts; the
    # gateway honours only the body limit (its 413). The simulator has no sockets or bodies.
    upstream = [
        "models[0].activator.max_concurrency_per_replica",
        "models[0].activator.upstream_connect_timeout_s",
        "models[0].activator.upstream_first_byte_timeout_s",
        "models[0].activator.upstream_idle_timeout_s",
    ]
    server = [
        "activator.header_timeout_s",
        "activator.body_timeout_s",
        "activator.keepalive_timeout_s",
        "activator.retry_after_s",
    ]
    assert _refused_keys(Runtime.KNATIVE) == [
        "models[0].activator.buffer_max_bytes",
        *upstream,
        *server,
    ]
    assert _refused_keys(Runtime.SIM) == [
        "models[0].activator.buffer_max_bytes",
        "models[0].activator.max_body_bytes",
        *upstream,
        *server,
    ]
    config = parse_policy(FRONT_DOOR_FILE, "f.yaml", Runtime.LOCAL)
    assert config.activator.retry_after_s == 2
    assert config.models[0].activator.max_concurrency_per_replica == 8


def test_the_local_stack_accepts_every_other_runtimes_section() -> None:
    config = parse_policy(CLUSTER_FILE, "f.yaml", Runtime.LOCAL)
    assert config.cluster is not None and config.models[0].pools == ("a",)
    assert refusals(config, Runtime.LOCAL) == []


def test_refusals_and_errors_come_together_in_one_policy_error() -> None:
    text = CLUSTER_FILE.replace("buffer_size: 7", "buffer_size: 0")
    errors = errors_of(text, Runtime.SIM)
    assert errors == (
        "models[0].activator.buffer_size (line 7): value 0: must be >= 1 (accepted: [1, 1000000])",
    )  # invalid first: a file is refused by a runtime only once it is valid
    assert isinstance(PolicyError("s", errors), ConfigFileError)


@pytest.mark.parametrize("runtime", list(Runtime))
def test_the_built_in_policy_passes_every_runtime(runtime: Runtime) -> None:
    # thaw up and the Knative controller / activator fall back to it without --config
    load_policy(default_config_path(), runtime)


def test_the_simulators_example_policy_passes_the_simulator() -> None:
    load_policy(REPO / "sim" / "examples" / "policy.yaml", Runtime.SIM)


# -- refusals at reload -------------------------------------------------------------------------


def test_a_reloaded_file_is_refused_like_a_loaded_one() -> None:
    old = parse_policy("models:\n  - name: m\n", "p.yaml", Runtime.KNATIVE)
    w = PolicyWatcher("p.yaml", old, Runtime.KNATIVE)
    out = w.consider(1, "models:\n  - name: n\n    activator: {buffer_size: 7}\n")
    assert not out.changed and out.config is old
    assert "models[0].activator.buffer_size (line 3): value 7: thaw knative does not honour it" in (
        out.reason
    )
    assert out.reason.endswith("keeping the policy in force")
    # the same file is fine for a runtime that honours it
    local = PolicyWatcher("p.yaml", old, Runtime.LOCAL)
    assert local.consider(1, "models:\n  - name: n\n    activator: {buffer_size: 7}\n").changed


# -- through the real commands ----------------------------------------------------------------


def thaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        thaw_argv(*args), capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(CLUSTER_FILE.replace("startup_timeout_s: 60", "startup_timeout_s: 300"))
    return path


def test_thaw_knative_controller_refuses_at_start(cluster_file: Path) -> None:
    done = thaw("knative", "controller", "--config", str(cluster_file))
    assert done.returncode == 2, done.stderr
    assert f"{cluster_file}: 2 errors" in done.stderr
    assert "models[0].autoscaling.forecast.enabled (line 5): value True: thaw knative" in (
        done.stderr
    )
    assert "models[0].activator.buffer_size (line 7): value 7: thaw knative" in done.stderr
    assert "warm_pool" not in done.stderr  # honoured


def test_thaw_knative_render_refuses_and_writes_nothing(cluster_file: Path) -> None:
    done = thaw("knative", "render", "--config", str(cluster_file))
    assert done.returncode == 2 and done.stdout == ""
    assert "models[0].activator.buffer_size (line 7): value 7: thaw knative does not honour" in (
        done.stderr
    )


def test_thaw_sim_refuses_before_simulating(cluster_file: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,374,44\n")
    out = tmp_path / "out"
    done = thaw("sim", "--trace", str(trace), "--config", str(cluster_file), "--out", str(out))
    assert done.returncode == 1
    assert "models[0].activator.buffer_size (line 7): value 7: thaw sim does not honour it" in (
        done.stderr
    )
    assert not out.exists()


def test_thaw_policy_check_lists_refusals_and_fails_for_the_runtime_asked(
    cluster_file: Path,
) -> None:
    done = thaw("policy", "check", str(cluster_file))
    assert done.returncode == 0, done.stderr
    assert "refused by thaw knative (thaw policy check --runtime knative):" in done.stdout
    assert "refused by thaw sim (thaw policy check --runtime sim):" in done.stdout
    assert "refused by thaw up" not in done.stdout
    strict = thaw("policy", "check", "--runtime", "sim", str(cluster_file))
    assert strict.returncode == 1 and strict.stdout == ""
    assert f"{cluster_file}: 1 error\n  models[0].activator.buffer_size (line 7)" in strict.stderr
    assert thaw("policy", "check", "--runtime", "up", str(cluster_file)).returncode == 0


def test_thaw_policy_support_prints_the_table() -> None:
    done = thaw("policy", "support")
    assert done.returncode == 0, done.stderr
    assert done.stdout == markdown_table()


# -- the README's layers --------------------------------------------------------------------


def test_the_readme_layers_are_the_contracts_order() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    section = README.split("## Layers", 1)[1].split("\n## ", 1)[0]
    listed = [
        [name.strip("`/") for name in re.findall(r"`[a-z_]+/`", line.split(" — ")[0])]
        for line in section.splitlines()
        if line.startswith("- `")
    ]
    contract = [[r.strip() for r in layer.split("|")] for layer in reversed(layers)]
    assert listed == contract
    assert "`lint-imports`" in section
