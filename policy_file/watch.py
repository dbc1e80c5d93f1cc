"""Reload the policy file on change: a bad new file (or one the runtime refuses) keeps the old
policy and says why."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from policy_file.load import MAX_POLICY_BYTES, PolicyError, parse_policy
from policy_file.schema import ThawConfig
from policy_file.support import Runtime

log = logging.getLogger(__name__)


# -- reload on change -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadOutcome:
    """What one look at the policy file found."""

    config: ThawConfig
    changed: bool
    reason: str


class PolicyWatcher:
    """Reload-on-change for one policy file.

    :meth:`consider` is the decision (no I/O): given the file's modification time and text, it
    returns the config to use — the new one when the text changed and is valid, else the old one
    with the reason. :meth:`poll` is the thin adapter: it stats and reads the file, calls
    :meth:`consider`, logs a rejected file once per distinct content, and returns the new config
    or None. The caller decides how often to poll (the local stack: once per tick) and where:
    :meth:`poll` reads and parses, so a server calls it off its event loop
    (``asyncio.to_thread``), and only when :meth:`may_have_changed` (a thread hop every tick
    is itself a delay on a loaded machine).

    ``runtime``: the runtime that runs the policy; a new file setting a key it does not honour is
    rejected like an invalid one (:func:`policy_file.support.refusals`).
    """

    def __init__(
        self, path: str | Path, current: ThawConfig, runtime: Runtime | None = None
    ) -> None:
        self.path = Path(path)
        self.runtime = runtime
        self._config = current
        self._mtime_ns: int | None = None
        self._digest: str | None = None
        self._rejected: str | None = None

    @property
    def config(self) -> ThawConfig:
        """The policy in force."""
        return self._config

    def consider(self, mtime_ns: int | None, text: str | None) -> ReloadOutcome:
        """Decide on the file as it is now; ``text`` None means it could not be read."""
        if text is None:
            return ReloadOutcome(self._config, False, f"{self.path}: unreadable; keeping the old")
        digest = hashlib.sha256(text.encode()).hexdigest()
        self._mtime_ns = mtime_ns
        if digest == self._digest:
            return ReloadOutcome(self._config, False, "unchanged")
        self._digest = digest
        try:
            new = parse_policy(text, str(self.path), self.runtime)
        except PolicyError as e:
            return ReloadOutcome(self._config, False, f"{e}\nkeeping the policy in force")
        if new == self._config:
            return ReloadOutcome(self._config, False, "unchanged")
        self._config = new
        return ReloadOutcome(new, True, f"{self.path}: reloaded ({len(new.models)} models)")

    def may_have_changed(self) -> bool:
        """One stat (cheap enough for an event loop): False when the file's modification time
        is the one last considered, so :meth:`poll` would find nothing to do."""
        try:
            return self.path.stat().st_mtime_ns != self._mtime_ns
        except OSError:
            return True  # poll says why

    def poll(self) -> ThawConfig | None:
        """Stat the file; if it changed, read and consider it. The new config, or None."""
        try:
            stat = self.path.stat()
        except OSError as e:
            self._log_rejected(f"{self.path}: cannot stat ({e}); keeping the policy in force")
            return None
        mtime_ns = stat.st_mtime_ns
        if mtime_ns == self._mtime_ns:
            return None
        if stat.st_size > MAX_POLICY_BYTES:  # refused unread
            self._mtime_ns = mtime_ns
            self._log_rejected(
                f"{self.path}: {stat.st_size:,} bytes, over the {MAX_POLICY_BYTES:,}-byte limit "
                "of a policy file; keeping the policy in force"
            )
            return None
        try:
            text: str | None = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self._log_rejected(f"{self.path}: cannot read ({e}); keeping the policy in force")
            return None
        outcome = self.consider(mtime_ns, text)
        if outcome.changed:
            self._rejected = None
            log.info("%s", outcome.reason)
            return outcome.config
        if outcome.reason != "unchanged":
            self._log_rejected(outcome.reason)
        return None

    def _log_rejected(self, reason: str) -> None:
        if reason != self._rejected:
            log.warning("policy file rejected: %s", reason)
            self._rejected = reason
