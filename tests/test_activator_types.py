"""The activator's limits refuse values they cannot honour, naming field and value; the
defaults are Knative-sized."""

from __future__ import annotations

import re

import pytest

from activator.types import ModelLimits, ServerLimits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, r"buffer_size\n.*greater than or equal to 1.*input_value=0"),
        ({"wait_timeout_s": 0.0}, r"wait_timeout_s\n.*greater than 0.*input_value=0.0"),
        ({"max_body_bytes": -5}, r"max_body_bytes\n.*or equal to 1024.*input_value=-5"),
        ({"buffer_max_bytes": 1000}, r"buffer_max_bytes\n.*or equal to 1048576"),
        ({"max_concurrency_per_replica": 0}, r"max_concurrency_per_replica\n.*or equal to 1"),
        ({"upstream_first_byte_timeout_s": 0.0}, r"upstream_first_byte_timeout_s\n.*than 0"),
        ({"upstream_idle_timeout_s": -1.0}, r"upstream_idle_timeout_s\n.*greater than 0"),
        ({"upstream_connect_timeout_s": 301.0}, r"upstream_connect_timeout_s\n.*or equal to 300"),
        (
            {"buffer_max_bytes": 2 * 2**20, "max_body_bytes": 3 * 2**20},
            r"buffer_max_bytes = 2097152, must be >= max_body_bytes \(3145728\)",
        ),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.compile(message, re.DOTALL)):
        ModelLimits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"header_timeout_s": 0.0}, r"header_timeout_s\n.*greater than 0"),
        ({"body_timeout_s": 4000.0}, r"body_timeout_s\n.*or equal to 3600"),
        ({"retry_after_s": 0}, r"retry_after_s\n.*greater than or equal to 1"),
    ],
)
def test_bad_server_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.compile(message, re.DOTALL)):
        ServerLimits(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    """Buffers sized like Knative's activator (10,000 per revision) with a memory bound."""
    assert ModelLimits() == ModelLimits(
        buffer_size=10_000,
        buffer_max_bytes=256 * 2**20,
        wait_timeout_s=300.0,
        max_body_bytes=1_048_576,
        max_concurrency_per_replica=1000,
        upstream_connect_timeout_s=5.0,
        upstream_first_byte_timeout_s=300.0,
        upstream_idle_timeout_s=60.0,
    )
    assert ServerLimits() == ServerLimits(
        header_timeout_s=30.0, body_timeout_s=60.0, keepalive_timeout_s=30.0, retry_after_s=5
    )
