"""Kubernetes API load of Thaw's Knative controller at rest: requests per second and CPU per
reconcile pass at 10, 100 and 1,000 PodAutoscalers, against the controller before watches.

The API server is the test harness (``tests/kube_api.py``: kmock over real HTTP on 127.0.0.1,
every request logged with its user agent). Each size gets N revisions of Thaw's class at zero (a
Deployment at 0 replicas and its PodAutoscaler, initial-scale 0), Knative's ConfigMaps as
``manifests/`` leaves them, and a stand-in for Knative's networking controller that gives each
new SKS its private Service (``tests/knative_world.py`` ``sks_status``, no ready endpoint).

- ``now``: this tree's :class:`knative.controller.Controller`, in this process, ticking every
  ``--tick-s`` (2 s, the CLI's default). Once every PA is settled (status written, inactive,
  no write for two ticks) its requests are counted over ``--window-s`` from the harness's log,
  and each reconcile pass (:meth:`Controller.tick`) is timed in CPU seconds
  (``time.process_time``; at rest a pass makes no request, so nothing else runs during it).
- ``before``: the controller at ``--baseline`` (default ``ef1c1b0``, the last before the
  watch-backed caches: a GET of the SKS and of the scale per PA per tick, a list of
  EndpointSlices per namespace per tick), read from ``git archive`` and run as a child process
  (``thaw knative controller --kubeconfig ...``) against the same harness; its requests are
  counted over the same window once every PA has its status.

Demand at zero is not read (no activator stand-in): its requests are the demand source's, not
the controller's. Goal at 1,000 PAs: <= 5 requests/s and <= 100 ms CPU per pass.

  .venv/bin/python bench/knative_api_load.py                 # 10, 100, 1000 PAs
  .venv/bin/python bench/knative_api_load.py --sizes 10 --window-s 10 --no-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import kmock  # noqa: E402
import yaml  # noqa: E402
from knative_world import (  # noqa: E402
    DEPLOY,
    PA,
    SKS,
    deployment,
    podautoscaler,
    put_configmap,
    shipped_config_autoscaler,
    sks_status,
    write_kubeconfig,
)
from kube_api import KubeApi  # noqa: E402

from kernel.clock import SystemClock  # noqa: E402
from knative.controller import Controller, ControllerSettings  # noqa: E402
from knative.demand import Revision  # noqa: E402
from knative.kube import KubeClient, KubeConfig  # noqa: E402
from policy_file.schema import ThawConfig  # noqa: E402

BEFORE = "ef1c1b0"
POLICY = {
    "models": [
        {
            "name": "tiny",
            "engine": {"kind": "emulator"},
            "autoscaling": {"min_replicas": 0, "max_replicas": 2, "scale_to_zero_grace_s": 30},
        }
    ]
}


class NoDemand:
    """Nothing waits at zero (the bench counts the controller's own requests)."""

    def new_tick(self) -> None:
        pass

    async def buffered(self, revision: Revision) -> int:
        return 0


async def networking(api: KubeApi, stop: asyncio.Event) -> None:
    """Knative's networking controller, for SKSs at zero: status once per new spec."""
    while not stop.is_set():
        for (g, p, _ns, _name), sks in list(api.objects.items()):
            if (g, p) != SKS:
                continue
            status = sks.get("status") or {}
            if status.get("observedGeneration") == sks["metadata"]["generation"]:
                continue
            new = copy.deepcopy(sks)
            new["status"] = sks_status(sks, 0)
            api.put_object(g, p, new)
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def world(n: int) -> AsyncIterator[tuple[KubeApi, str]]:
    async with KubeApi() as api, kmock.Server(api) as server:
        put_configmap(api, "config-autoscaler", shipped_config_autoscaler())
        put_configmap(api, "config-deployment", {})
        for i in range(n):
            name = f"tiny-{i:05d}"
            api.put_object(*DEPLOY, deployment(name))
            api.put_object(*PA, podautoscaler(name))
        stop = asyncio.Event()
        task = asyncio.create_task(networking(api, stop))
        try:
            yield api, str(server.url).rstrip("/")
        finally:
            stop.set()
            await task


def settled(api: KubeApi, n: int) -> bool:
    pas = [o for (g, p, _, _), o in api.objects.items() if (g, p) == PA]
    if len(pas) != n:
        return False
    for pa in pas:
        conds = {c["type"]: c for c in (pa.get("status") or {}).get("conditions") or []}
        if conds.get("Active", {}).get("reason") != "NoTraffic":
            return False
        if not (pa.get("status") or {}).get("serviceName"):
            return False
    return True


async def wait_settled(api: KubeApi, n: int, agent: str, tick_s: float, limit_s: float) -> float:
    """Seconds until every PA is settled and the controller wrote nothing for two ticks."""
    t0 = time.monotonic()
    while True:
        if settled(api, n):
            last = _writes(api, agent)
            await asyncio.sleep(2 * tick_s + 0.5)
            if _writes(api, agent) == last:
                return time.monotonic() - t0
        if time.monotonic() - t0 > limit_s:
            raise RuntimeError(f"{n} PAs not settled after {limit_s:.0f} s ({agent})")
        await asyncio.sleep(0.5)


def _writes(api: KubeApi, agent: str) -> int:
    """The agent's writes but the Lease's (renewed every few seconds whatever happens)."""
    return sum(1 for r in api.writes() if r.user_agent.startswith(agent) and r.resource != "leases")


def count(api: KubeApi, agent: str, start: int) -> Counter[str]:
    return Counter(
        f"{r.verb} {r.resource}" for r in api.log[start:] if r.user_agent.startswith(agent)
    )


async def measure_now(n: int, tick_s: float, window_s: float, tmp: Path) -> dict[str, Any]:
    async with world(n) as (api, server):
        cfg = KubeConfig.load(str(write_kubeconfig(tmp / "kubeconfig-now", server)), None, False)
        settings = ControllerSettings(tick_s=tick_s, identity="now")
        stop = asyncio.Event()
        async with (
            KubeClient(cfg, user_agent="thaw-controller/now") as kube,
            aiohttp.ClientSession() as http,
        ):
            ctl = Controller(
                kube,
                http,
                ThawConfig.model_validate(POLICY),
                NoDemand(),
                SystemClock(),
                settings,
            )
            cpu_s: list[float] = []
            tick = ctl.tick

            async def timed_tick() -> None:
                c0 = time.process_time()
                await tick()
                cpu_s.append(time.process_time() - c0)

            ctl.tick = timed_tick  # type: ignore[method-assign]
            task = asyncio.create_task(ctl.run(stop))
            try:
                settle_s = await wait_settled(api, n, "thaw-controller/now", tick_s, 600)
                start, passes = len(api.log), len(cpu_s)
                await asyncio.sleep(window_s)
                got = count(api, "thaw-controller/now", start)
                window = cpu_s[passes:]
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=30)
    return {
        "settle_s": settle_s,
        "req_per_s": sum(got.values()) / window_s,
        "requests": dict(got),
        "cpu_ms_median": 1000 * statistics.median(window) if window else float("nan"),
        "cpu_ms_max": 1000 * max(window) if window else float("nan"),
        "passes": len(window),
    }


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="thaw-api-load-") as d:
        blob = subprocess.run(
            ["git", "archive", rev], cwd=REPO, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(d, filter="data")
        yield Path(d)


async def measure_before(
    n: int, tick_s: float, window_s: float, tmp: Path, tree: Path
) -> dict[str, Any]:
    async with world(n) as (api, server):
        kubeconfig = write_kubeconfig(tmp / "kubeconfig-before", server)
        policy = tmp / "policy.yaml"
        policy.write_text(yaml.safe_dump(POLICY))
        argv = [
            sys.executable,
            "-c",
            "import sys; from thaw.cli import main; sys.exit(main())",
            "knative",
            "controller",
            "--kubeconfig",
            str(kubeconfig),
            "--config",
            str(policy),
            "--tick-s",
            str(tick_s),
            "--identity",
            "before",
            "--log-level",
            "WARNING",
        ]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        log = (tmp / "before.log").open("w")
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            settle_s = await wait_settled(api, n, "thaw-controller", tick_s, 900)
            start = len(api.log)
            await asyncio.sleep(window_s)
            got = count(api, "thaw-controller", start)
        finally:
            proc.terminate()
            await proc.wait()
            log.close()
    return {"settle_s": settle_s, "req_per_s": sum(got.values()) / window_s, "requests": dict(got)}


async def main_async(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tree_cm = baseline_tree(args.baseline) if args.baseline else contextlib.nullcontext()
        with tree_cm as tree:
            for n in args.sizes:
                now = await measure_now(n, args.tick_s, args.window_s, tmp)
                before = (
                    await measure_before(n, args.tick_s, args.window_s, tmp, tree)
                    if tree is not None
                    else None
                )
                rows.append((n, now, before))
                b = f"{before['req_per_s']:9.1f}" if before else "      n/a"
                ratio = (
                    f"{now['req_per_s'] / before['req_per_s']:8.4f}"
                    if before and before["req_per_s"]
                    else "     n/a"
                )
                print(
                    f"{n:6d} PAs: now {now['req_per_s']:6.2f} req/s (before {b}, now/before "
                    f"{ratio}); CPU per pass median {now['cpu_ms_median']:6.1f} ms, max "
                    f"{now['cpu_ms_max']:6.1f} ms over {now['passes']} passes; settled in "
                    f"{now['settle_s']:.0f} s",
                    flush=True,
                )
                print(f"        now:    {now['requests']}")
                if before:
                    print(f"        before: {before['requests']}")
    n, now, _ = rows[-1]
    ok = now["req_per_s"] <= 5.0 and now["cpu_ms_median"] <= 100.0
    print(
        f"goal at {n} PAs (<= 5 req/s, <= 100 ms CPU per pass): "
        f"{'met' if ok else 'NOT met'} ({now['req_per_s']:.2f} req/s, "
        f"{now['cpu_ms_median']:.1f} ms)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--tick-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--baseline", default=BEFORE, help="git revision (default %(default)s)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_const", const="")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
