"""The activator's per-model limits refuse values it cannot honour, naming field and value."""

from __future__ import annotations

import pytest

from activator.types import ModelLimits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buffer_size": 0}, "buffer_size = 0, must be >= 1"),
        ({"wait_timeout_s": 0.0}, "wait_timeout_s = 0.0, must be > 0"),
        ({"max_body_bytes": -5}, "max_body_bytes = -5, must be > 0"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelLimits(**kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    assert ModelLimits() == ModelLimits(
        buffer_size=100, wait_timeout_s=300.0, max_body_bytes=1_048_576
    )
