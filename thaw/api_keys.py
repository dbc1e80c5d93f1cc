"""The front door's API keys, from ``--api-key-file`` or ``THAW_API_KEYS`` (``thaw up``)."""

from __future__ import annotations

from pathlib import Path


def api_keys(path: Path | None, env_value: str | None) -> frozenset[str] | None:
    """Keys from the file (one per line, # comments) or the environment; None: open access."""
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        keys = {ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")}
        if not keys:
            raise ValueError(f"--api-key-file {path}: no key in it (one key per line)")
        return frozenset(keys)
    if env_value:
        return frozenset(k.strip() for k in env_value.split(",") if k.strip()) or None
    return None
