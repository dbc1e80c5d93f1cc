"""The activator's per-model limits refuse values it cannot honour, naming field and value."""

from __future__ import annotations

import re

import pytest

from activator.types import ModelLimits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, r"buffer_size\n.*greater than or equal to 1.*input_value=0"),
        ({"wait_timeout_s": 0.0}, r"wait_timeout_s\n.*greater than 0.*input_value=0.0"),
        ({"max_body_bytes": -5}, r"max_body_bytes\n.*or equal to 1024.*input_value=-5"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.compile(message, re.DOTALL)):
        ModelLimits(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    assert ModelLimits() == ModelLimits(
        buffer_size=100, wait_timeout_s=300.0, max_body_bytes=1_048_576
    )
