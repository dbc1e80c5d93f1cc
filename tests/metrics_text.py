"""Reading a Prometheus /metrics page in tests: one sample's value summed over the series whose
labels match, and the page of a running server."""

from __future__ import annotations

import aiohttp


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in ``text`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def get_metrics(base: str) -> str:
    """``base``'s /metrics page."""
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        return await r.text()
