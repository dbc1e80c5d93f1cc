"""The root of Thaw's error hierarchy.

Each package family defines its own root deriving from :class:`ThawError` and wraps third-party
errors (botocore, kubernetes, aiohttp) with ``raise ... from e``.
"""

from __future__ import annotations


class ThawError(Exception):
    """Base of every error Thaw raises on purpose."""


class ConfigError(ThawError):
    """A config value is wrong; the message names the field, its value and what is accepted."""
