"""The node agent as a real process (``thaw cache serve``) against moto's S3 server: the HTTP
surface, single flight over HTTP, pins, metrics, OpenAI-shaped errors, and the CLI beside it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cache_servers import S3Server, moto_server
from procs import child, free_port, thaw_argv, wait_http_ok

from model_cache.manifest import MANIFEST_NAME
from model_cache.push import push
from model_cache.s3 import S3Location

MiB = 1024 * 1024


@dataclass(frozen=True)
class Agent:
    url: str
    dir: Path
    s3: S3Server
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    work = tmp_path_factory.mktemp("agent")
    with moto_server(work) as s3:
        client = s3.client()
        for name, files in {
            "small": {"config.json": b"{}", "w.bin": os.urandom(100_000)},
            "shared": {"w.bin": os.urandom(16 * MiB)},
            "pinned": {"w.bin": b"p" * 1000},
        }.items():
            for rel, data in files.items():
                (work / "src" / name / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / "src" / name / rel).write_bytes(data)
            push(work / "src" / name, S3Location("models", name), client)
        client.close()
        port = free_port()
        argv = thaw_argv(
            "cache",
            "serve",
            "--dir",
            str(work / "cache"),
            "--budget-bytes",
            "50MB",
            "--port",
            str(port),
            "--s3-endpoint",
            s3.endpoint,
            "--s3-prefix",
            "s3://models",
            "--chunk-bytes",
            "1MiB",
            "--concurrency",
            "4",
        )
        with child(argv, env=s3.env, log_path=work / "agent.log") as proc:
            wait_http_ok(f"http://127.0.0.1:{port}/health", 30, proc)
            yield Agent(f"http://127.0.0.1:{port}", work / "cache", s3, proc)


def metrics(agent: Agent) -> dict[str, float]:
    text = httpx.get(f"{agent.url}/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def assert_error(resp: httpx.Response, status: int, code: str, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"]) == (code, param), err
    assert isinstance(err["message"], str) and err["message"]
    return str(err["message"])


def test_health(agent: Agent) -> None:
    assert httpx.get(f"{agent.url}/health").json() == {"status": "ok"}


def test_ensure_miss_then_hit_and_listing(agent: Agent) -> None:
    r = httpx.post(f"{agent.url}/v1/models/small/ensure", timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tier"] == "miss" and body["fetched_bytes"] == body["size_bytes"] == 100_002
    path = Path(body["path"])
    assert path == agent.dir / "models" / "small" / body["revision"]
    assert (path / "config.json").read_bytes() == b"{}"
    again = httpx.post(
        f"{agent.url}/v1/models/small/ensure", json={"s3_uri": "s3://models/small"}, timeout=60
    ).json()
    assert (again["tier"], again["path"], again["fetched_bytes"]) == ("hit", str(path), 0)
    listing = httpx.get(f"{agent.url}/v1/models").json()
    assert listing["object"] == "list" and listing["budget_bytes"] == 50_000_000
    [small] = [m for m in listing["data"] if m["name"] == "small"]
    assert small == {
        "id": "small",
        "object": "model",
        "name": "small",
        "revision": body["revision"],
        "path": str(path),
        "size_bytes": 100_002,
        "last_used": small["last_used"],
        "pins": 0,
        "pinned": False,
        "state": "ready",
    }
    one = httpx.get(f"{agent.url}/v1/models/small").json()
    assert one["data"] == [small]
    m = metrics(agent)
    assert m['thaw_cache_misses_total{model="small"}'] == 1
    assert m['thaw_cache_hits_total{model="small"}'] == 1
    assert m["thaw_cache_pull_seconds_count"] >= 1
    assert m["thaw_cache_bytes"] >= 100_002
    # `thaw cache ls` reads the same directory while the agent serves it
    ls = subprocess.run(
        [*thaw_argv("cache", "ls", "--dir", str(agent.dir), "--json")],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["name"]: r for r in map(json.loads, ls.stdout.splitlines())}
    assert {"name": "small", "state": "ready", "path": str(path)}.items() <= rows["small"].items()


def test_concurrent_ensures_over_http_share_one_download(agent: Agent) -> None:
    n = 8
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def one() -> None:
        barrier.wait()
        answers.append(httpx.post(f"{agent.url}/v1/models/shared/ensure", timeout=120))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert [a.status_code for a in answers] == [200] * n, [a.text for a in answers]
    assert len({a.json()["path"] for a in answers}) == 1
    m = metrics(agent)
    assert m['thaw_cache_misses_total{model="shared"}'] == 1
    before_others = m["thaw_cache_fetched_bytes_total"]
    # one download of 16 MiB in total (plus what the other tests fetched, at most 100_002 bytes)
    assert 16 * MiB <= before_others <= 16 * MiB + 100_002 + 1000


def test_pin_and_unpin(agent: Agent) -> None:
    url = f"{agent.url}/v1/models/pinned"
    assert_error(httpx.post(f"{url}/pin"), 404, "model_not_found", "name")
    assert httpx.post(f"{url}/ensure", json={"pin": True}, timeout=60).json()["pins"] == 1
    assert httpx.post(f"{url}/pin").json()["pins"] == 2
    [entry] = httpx.get(url).json()["data"]
    assert (entry["pins"], entry["pinned"]) == (2, True)
    assert httpx.post(f"{url}/unpin", json={"revision": entry["revision"]}).json()["pins"] == 1
    assert httpx.post(f"{url}/unpin").json()["pins"] == 0
    msg = assert_error(httpx.post(f"{url}/unpin"), 409, "not_pinned", "name")
    assert "is not pinned" in msg


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("path", "status", "code", "param"),
    [
        ("/v1/models/.hidden/ensure", 400, "invalid_manifest", "name"),
        ("/v1/models/a%20b/ensure", 400, "invalid_manifest", "name"),
        ("/v1/models/..%2F..%2Fetc/ensure", 404, "not_found", None),
        ("/v1/models/%2E%2E/ensure", 400, "invalid_manifest", "name"),
        ("/v1/nothing", 404, "not_found", None),
    ],
)
def test_bad_names_and_routes(
    agent: Agent, path: str, status: int, code: str, param: str | None
) -> None:
    before = snapshot(agent.dir.parent)
    resp = httpx.post(f"{agent.url}{path}")
    assert_error(resp, status, code, param)
    assert snapshot(agent.dir.parent) == before


@pytest.mark.parametrize(
    ("body", "code", "param", "needle"),
    [
        ({"s3_uri": "http://x"}, "invalid_value", "s3_uri", "must look like s3://BUCKET"),
        ({"revision": "abc"}, "invalid_manifest", "revision", "64 lowercase hex"),
        ({"pin": True, "color": 1}, "invalid_value", "color", "color = 1"),
        ({"pin": "maybe"}, "invalid_value", "pin", "pin = 'maybe'"),
    ],
)
def test_bad_bodies(
    agent: Agent, body: dict[str, object], code: str, param: str, needle: str
) -> None:
    resp = httpx.post(f"{agent.url}/v1/models/small/ensure", json=body)
    assert needle in assert_error(resp, 400, code, param)


def test_traversal_manifest_over_http_is_refused_before_any_write(agent: Agent) -> None:
    client = agent.s3.client()
    evil = b"evil"
    entry = {
        "path": "../../../escape.bin",
        "size_bytes": 4,
        "sha256": hashlib.sha256(evil).hexdigest(),
    }
    revision = hashlib.sha256(
        f"{entry['path']}\0{entry['size_bytes']}\0{entry['sha256']}\n".encode()
    ).hexdigest()
    loc = S3Location("models", "evil")
    client.put_bytes(loc, "../../../escape.bin", evil)
    client.put_bytes(
        loc,
        MANIFEST_NAME,
        json.dumps({"model": "evil", "revision": revision, "files": [entry]}).encode(),
    )
    client.close()
    before = snapshot(agent.dir.parent)
    resp = httpx.post(f"{agent.url}/v1/models/evil/ensure", timeout=30)
    msg = assert_error(resp, 400, "invalid_manifest", "files[0].path")
    assert "'../../../escape.bin': must not have '.' or '..' parts" in msg
    assert snapshot(agent.dir.parent) == before


def test_missing_model_and_locked_dir(agent: Agent) -> None:
    resp = httpx.post(f"{agent.url}/v1/models/absent/ensure", timeout=30)
    assert "thaw cache push" in assert_error(resp, 404, "model_not_found", "s3_uri")
    # the agent holds the directory's lock: a second writer is refused, clearly
    pull = subprocess.run(
        thaw_argv("cache", "pull", "s3://models/small", "--dir", str(agent.dir), "--no-progress"),
        capture_output=True,
        text=True,
        env={**os.environ, **agent.s3.env},
    )
    assert pull.returncode == 1
    assert "holds the cache's lock" in pull.stderr


async def test_the_asyncio_client(agent: Agent) -> None:
    import aiohttp

    from model_cache.client import AgentError, CacheAgentClient
    from model_cache.types import COLD_START_TIER

    async with aiohttp.ClientSession() as session:
        client = CacheAgentClient(agent.url, session)
        r = await client.ensure("small", pin=True)
        assert r.path.is_dir() and r.pins >= 1
        assert COLD_START_TIER[r.tier] in ("local_disk", "remote")
        [held] = await client.holds("small")
        assert (held.path, held.revision, held.pinned) == (r.path, r.revision, True)
        assert (await client.unpin("small")).pins == r.pins - 1
        with pytest.raises(AgentError) as e:
            await client.ensure("absent")
        assert (e.value.status, e.value.code, e.value.param) == (404, "model_not_found", "s3_uri")
        dead = CacheAgentClient(f"http://127.0.0.1:{free_port()}", session)
        with pytest.raises(AgentError) as e:
            await dead.models()
        assert (e.value.status, e.value.code) == (0, "unreachable")
