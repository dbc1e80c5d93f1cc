"""The open-files limit of a serving process: raised to its hard limit at start.

A front door holds one descriptor per client connection and one per upstream connection; the
usual soft limit of 1,024 would refuse the 1,025th socket (and the engine replicas it starts
inherit the limit). ``thaw up`` and ``thaw emulator`` call
:func:`raise_open_files_limit` first thing; it logs what it did.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("thaw.limits")


def raise_open_files_limit() -> tuple[int, int]:
    """Set the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(before, after)`` soft limits.

    Logs the change at INFO (or that the soft limit already is the hard one); a refusal from the
    kernel is logged as a warning and leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open files limit: %s (the hard limit)", _show(soft))
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warning(
            "open files limit: could not raise %s to %s (%s); at most about %s connections",
            _show(soft),
            _show(target),
            e,
            _show(soft),
        )
        return soft, soft
    log.info("open files limit: raised from %s to %s (the hard limit)", _show(soft), _show(target))
    return soft, target


def _show(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else f"{n:,}"
