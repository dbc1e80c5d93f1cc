"""Leader election through a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

One controller replica acts; the others wait. The leader renews the Lease every
``renew_every_s``; a candidate takes it over once the record has not changed for
``lease_duration_s`` *as measured on its own monotonic clock* (client-go's rule: no trust in
other machines' wall clocks). Writes go through PUT with the resourceVersion read, so two
candidates racing for an expired Lease cannot both win: the loser gets 409.

:func:`step` is the pure part: the Lease as read, who we are and what we observed when, in; what
to write (or nothing) out. :class:`LeaderElector` is the thin loop around the API.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from dataclasses import dataclass
from typing import Any, Literal

from kernel.clock import Clock
from knative.kube import ConflictError, KubeClient, KubeError, NotFoundError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Action = Literal["create", "renew", "take_over", "wait"]


@dataclass(frozen=True)
class Observation:
    """The Lease record we last saw and when it changed (monotonic seconds, our clock)."""

    record: tuple[str, str, int]  # (holderIdentity, renewTime, leaseTransitions)
    changed_at_s: float


@dataclass(frozen=True)
class Step:
    action: Action
    lease: Obj | None  # the object to create/PUT; None for "wait"


def _micro_time(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(lease: Obj) -> tuple[str, str, int]:
    spec = lease.get("spec") or {}
    return (
        str(spec.get("holderIdentity") or ""),
        str(spec.get("renewTime") or ""),
        int(spec.get("leaseTransitions") or 0),
    )


def step(
    lease: Obj | None,
    name: str,
    namespace: str,
    identity: str,
    observed: Observation | None,
    now_s: float,
    now_wall: datetime.datetime,
    lease_duration_s: float,
) -> Step:
    """What to do with the Lease now. ``observed`` must already account for ``lease`` (the caller
    updates it when the record changes)."""
    stamp = _micro_time(now_wall)
    duration = max(1, round(lease_duration_s))
    if lease is None:
        return Step(
            "create",
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "holderIdentity": identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": stamp,
                    "renewTime": stamp,
                    "leaseTransitions": 0,
                },
            },
        )
    holder, _, transitions = record_of(lease)
    out = copy.deepcopy(lease)
    spec = out.setdefault("spec", {})
    if holder == identity:
        spec["renewTime"] = stamp
        spec["leaseDurationSeconds"] = duration
        return Step("renew", out)
    expired = not holder or observed is None or now_s - observed.changed_at_s >= lease_duration_s
    if not expired:
        return Step("wait", None)
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=duration,
        acquireTime=stamp,
        renewTime=stamp,
        leaseTransitions=transitions + 1,
    )
    return Step("take_over", out)


class LeaderElector:
    """Keeps :attr:`is_leader` true while this identity holds the Lease."""

    def __init__(
        self,
        kube: KubeClient,
        clock: Clock,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_every_s: float = 5.0,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_every_s = renew_every_s
        self.is_leader = False
        self.changed = asyncio.Event()
        self._observed: Observation | None = None
        self._renewed_at_s: float | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    async def try_once(self) -> bool:
        """One round: read, decide, write. Returns whether we lead afterwards."""
        now_s = self.clock.monotonic()
        try:
            lease: Obj | None = await self.kube.get(self.path)
        except NotFoundError:
            lease = None
        if lease is not None:
            rec = record_of(lease)
            if self._observed is None or self._observed.record != rec:
                self._observed = Observation(rec, now_s)
        s = step(
            lease,
            self.name,
            self.namespace,
            self.identity,
            self._observed,
            now_s,
            datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC),
            self.lease_duration_s,
        )
        leading = False
        conflict = False
        if s.action == "wait":
            leading = False
        else:
            assert s.lease is not None
            try:
                if s.action == "create":
                    written = await self.kube.create(
                        f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                        s.lease,
                    )
                else:
                    written = await self.kube.replace(self.path, s.lease)
                self._observed = Observation(record_of(written), now_s)
                self._renewed_at_s = now_s
                leading = True
                if s.action != "renew":
                    log.info(
                        "leader election: %s the lease %s (%s)", s.action, self.name, self.identity
                    )
            except ConflictError:
                conflict = True  # someone else wrote first; read again next round
        if self.is_leader and conflict and s.action == "renew":
            # A renewal lost a race: keep acting only while our last renewal is surely valid.
            renewed = self._renewed_at_s
            if renewed is not None and now_s - renewed < self.lease_duration_s * 2 / 3:
                leading = True
        if leading != self.is_leader:
            self.is_leader = leading
            self.changed.set()
        return leading

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown (as client-go's ReleaseOnCancel): holder
        emptied, so a candidate takes over at its next round instead of after the duration."""
        if not self.is_leader:
            return
        self.is_leader = False
        self.changed.set()
        try:
            lease = await self.kube.get(self.path)
            if record_of(lease)[0] != self.identity:
                return
            out = copy.deepcopy(lease)
            stamp = _micro_time(datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC))
            out["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=stamp)
            await self.kube.replace(self.path, out)
            log.info("leader election: released the lease %s (%s)", self.name, self.identity)
        except KubeError as e:
            log.warning("leader election: could not release the lease: %s", e)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.try_once()
            except KubeError as e:
                log.warning("leader election: %s", e)
                if self.is_leader and self._renewed_at_s is not None:
                    if self.clock.monotonic() - self._renewed_at_s >= (
                        self.lease_duration_s * 2 / 3
                    ):
                        self.is_leader = False
                        self.changed.set()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.renew_every_s)
            except TimeoutError:
                pass
