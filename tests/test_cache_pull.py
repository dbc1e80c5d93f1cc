"""The cache service against a real S3 server (moto's, a process on 127.0.0.1): push, pull, hit,
resume, checksum refusal and retry, path safety before any write, symlinks, single flight, pins,
LRU eviction under budget."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cache_servers import S3Server, moto_server

from kernel.clock import ManualClock
from model_cache.cache import ModelCache
from model_cache.errors import (
    BudgetError,
    ChecksumError,
    ManifestError,
    NotCachedError,
    PinError,
    SourceMismatchError,
    UnsafePathError,
)
from model_cache.manifest import MANIFEST_NAME, Manifest
from model_cache.puller import PullConfig
from model_cache.push import push
from model_cache.s3 import S3Client, S3Location, S3Settings, parse_s3_uri
from model_cache.store import Store

MiB = 1024 * 1024
SMALL_PULL = PullConfig(chunk_bytes=256 * 1024, concurrency=4, sync_every_bytes=256 * 1024)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def client(s3: S3Server) -> Iterator[S3Client]:
    c = s3.client()
    yield c
    c.close()


CacheFactory = Callable[..., ModelCache]


@pytest.fixture
def make_cache(tmp_path: Path, client: S3Client) -> Iterator[CacheFactory]:
    """Started caches on ``tmp_path/cache`` (one at a time: the store's lock is exclusive)."""
    opened: list[ModelCache] = []
    clock = ManualClock(1_000_000.0)

    def make(
        budget_bytes: int | None = None,
        pull: PullConfig = SMALL_PULL,
        s3_client: S3Client | None = None,
        default_source: S3Location | None = None,
    ) -> ModelCache:
        for c in opened:
            c.close()
            c.store.close()
        opened.clear()
        cache = ModelCache(
            Store.open(tmp_path / "cache"),
            s3_client or client,
            clock,
            budget_bytes=budget_bytes,
            pull=pull,
            default_source=default_source,
        )
        cache.start()
        opened.append(cache)
        return cache

    yield make
    for c in opened:
        c.close()
        c.store.close()


def write_model(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def publish(tmp_path: Path, client: S3Client, name: str, files: dict[str, bytes]) -> Manifest:
    src = write_model(tmp_path / "src" / name, files)
    return push(src, S3Location("models", name), client)


def tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` (files: size, dirs: -1), for before/after comparisons."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = -1
        for n in filenames:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root)] = os.lstat(full).st_size
    return out


def metric(cache: ModelCache, name: str, **labels: str) -> float:
    value = cache.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_push_then_miss_then_hit(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    files = {
        "config.json": b'{"a": 1}',
        "weights/model.bin": os.urandom(3 * MiB + 17),
        "tok/vocab.txt": b"a\nb\n",
        "empty": b"",
    }
    manifest = publish(tmp_path, client, "basic", files)
    listed = client.raw.list_objects_v2(Bucket="models", Prefix="basic/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(
        [f"basic/{p}" for p in files] + [f"basic/{MANIFEST_NAME}"]
    )
    cache = make_cache()
    r = cache.ensure("basic", "s3://models/basic")
    assert (r.tier, r.revision, r.size_bytes) == ("miss", manifest.revision, manifest.total_bytes)
    assert r.fetched_bytes == manifest.total_bytes and r.resumed_bytes == 0
    assert r.path == tmp_path / "cache" / "models" / "basic" / manifest.revision
    for rel, data in files.items():
        assert (r.path / rel).read_bytes() == data
    assert (r.path / MANIFEST_NAME).read_bytes() == manifest.to_json()
    assert not any((tmp_path / "cache" / ".partial").iterdir())
    again = cache.ensure("basic", "s3://models/basic")
    assert (again.tier, again.path, again.fetched_bytes) == ("hit", r.path, 0)
    assert metric(cache, "thaw_cache_misses_total", model="basic") == 1
    assert metric(cache, "thaw_cache_hits_total", model="basic") == 1
    assert metric(cache, "thaw_cache_fetched_bytes_total") == manifest.total_bytes
    assert metric(cache, "thaw_cache_bytes") == manifest.total_bytes
    assert metric(cache, "thaw_cache_pull_seconds_count") == 1
    [m] = cache.models()
    assert (m.name, m.state, m.pins, m.path) == ("basic", "ready", 0, r.path)
    # a restarted cache finds it on disk, and a revision-pinned ensure needs no S3 at all
    cache = make_cache(s3_client=None)
    hit = cache.ensure("basic", revision=manifest.revision)
    assert (hit.tier, hit.path) == ("hit", r.path)


class Interrupted(Exception):
    pass


def test_interrupted_pull_resumes_from_the_journal(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    big = os.urandom(12 * MiB + 5)
    manifest = publish(tmp_path, client, "resume", {"model.bin": big, "config.json": b"{}"})
    seen = [0]

    def interrupt_after_4mib(n: int) -> None:
        seen[0] += n
        if seen[0] >= 4 * MiB:
            raise Interrupted

    cache = make_cache()
    with pytest.raises(Interrupted):
        cache.ensure("resume", "s3://models/resume", progress=interrupt_after_4mib)
    final = tmp_path / "cache" / "models" / "resume"
    assert not final.exists()
    [partial] = cache.models()
    assert partial.state == "partial"
    parts = tmp_path / "cache" / ".partial" / "resume" / f"{manifest.revision}.parts"
    [journal] = parts.glob("*.journal")
    journaled = sum(
        int(b) - int(a) for a, b in (line.split() for line in journal.read_text().splitlines()[1:])
    )
    assert journaled >= 3 * MiB

    cache = make_cache()  # a new process would see the same disk
    r = cache.ensure("resume", "s3://models/resume")
    assert r.tier == "miss"
    assert r.resumed_bytes >= journaled
    assert r.fetched_bytes + r.resumed_bytes == manifest.total_bytes
    assert r.fetched_bytes < manifest.total_bytes - 3 * MiB
    assert (r.path / "model.bin").read_bytes() == big
    assert not parts.exists()


def test_checksum_mismatch_is_refused_retried_then_reported(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    data = os.urandom(MiB)
    publish(tmp_path, client, "corrupt", {"a.json": b"{}", "model.bin": data})
    corrupted = bytearray(data)
    corrupted[12345] ^= 0xFF
    client.put_bytes(S3Location("models", "corrupt"), "model.bin", bytes(corrupted))
    cache = make_cache()
    with pytest.raises(ChecksumError) as e:
        cache.ensure("corrupt", "s3://models/corrupt")
    msg = str(e.value)
    assert "corrupt/model.bin" in msg and hashlib.sha256(data).hexdigest() in msg
    assert "refused after 3 attempts" in msg
    assert e.value.param == "model.bin"
    # fetched three times (plus the small file once): retried, then given up
    assert metric(cache, "thaw_cache_fetched_bytes_total") == 3 * MiB + 2
    assert metric(cache, "thaw_cache_pull_failures_total", model="corrupt", code=e.value.code) == 1
    assert not (tmp_path / "cache" / "models" / "corrupt").exists()
    staging = tmp_path / "cache" / ".partial" / "corrupt"
    assert not list(staging.rglob("*.part")) and not list(staging.rglob("model.bin"))
    # once S3 holds the right bytes again, the next ensure resumes the staged file and succeeds
    client.put_bytes(S3Location("models", "corrupt"), "model.bin", data)
    r = cache.ensure("corrupt", "s3://models/corrupt")
    assert (r.path / "model.bin").read_bytes() == data
    assert (r.fetched_bytes, r.resumed_bytes) == (MiB, 2)


def test_wrong_size_object_is_refused(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    publish(tmp_path, client, "short", {"model.bin": os.urandom(600_000)})
    client.put_bytes(S3Location("models", "short"), "model.bin", os.urandom(500_000))
    cache = make_cache(pull=PullConfig(chunk_bytes=256 * 1024, max_attempts=2))
    with pytest.raises(ChecksumError, match="the object is 500000 bytes, the manifest says 600000"):
        cache.ensure("short", "s3://models/short")


def raw_manifest(files: list[tuple[str, bytes]]) -> bytes:
    entries = [
        {"path": p, "size_bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files
    ]
    revision = hashlib.sha256(
        "".join(
            f"{e['path']}\0{e['size_bytes']}\0{e['sha256']}\n"
            for e in sorted(entries, key=lambda e: str(e["path"]))
        ).encode()
    ).hexdigest()
    return json.dumps({"model": "evil", "revision": revision, "files": entries}).encode()


@pytest.mark.parametrize(
    "bad", ["../../escape.bin", "ok/../../../escape.bin", "/tmp/escape.bin", "a\\..\\escape.bin"]
)
def test_traversal_in_an_s3_manifest_is_refused_before_any_write(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory, bad: str
) -> None:
    loc = S3Location("models", "evil")
    client.put_bytes(loc, "fine.bin", b"fine")
    client.put_bytes(loc, bad, b"evil")
    client.put_bytes(loc, MANIFEST_NAME, raw_manifest([("fine.bin", b"fine"), (bad, b"evil")]))
    cache = make_cache()
    before = tree(tmp_path)
    with pytest.raises(ManifestError) as e:
        cache.ensure("evil", "s3://models/evil")
    assert e.value.param is not None and e.value.param.endswith("].path")
    assert repr(bad) in str(e.value)
    assert tree(tmp_path) == before
    assert not list(tmp_path.parent.rglob("escape.bin"))


@pytest.mark.parametrize("name", ["..", "../x", ".partial", "a/b", "", "x" * 200])
def test_bad_model_names_are_refused_before_any_write(
    tmp_path: Path, make_cache: CacheFactory, name: str
) -> None:
    cache = make_cache()
    before = tree(tmp_path)
    with pytest.raises(ManifestError) as e:
        cache.ensure(name, "s3://models/basic")
    assert e.value.param == "name"
    assert tree(tmp_path) == before


def test_symlinks_in_the_cache_are_refused(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    publish(tmp_path, client, "linked", {"model.bin": b"real weights"})
    cache = make_cache()
    r = cache.ensure("linked", "s3://models/linked")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * len(b"real weights"))
    (r.path / "model.bin").unlink()
    (r.path / "model.bin").symlink_to(outside)
    cache = make_cache()  # the scan refuses (and removes) the revision holding a symlink
    assert cache.holds("linked") is None
    assert outside.read_bytes() == b"x" * len(b"real weights")
    again = cache.ensure("linked", "s3://models/linked")
    assert again.tier == "miss"
    assert not (again.path / "model.bin").is_symlink()
    assert (again.path / "model.bin").read_bytes() == b"real weights"

    # a symlinked staging directory pointing elsewhere: refused, nothing written there
    publish(tmp_path, client, "linked2", {"model.bin": b"w"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache" / ".partial" / "linked2").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symlink"):
        cache.ensure("linked2", "s3://models/linked2")
    assert list(elsewhere.iterdir()) == []


def test_concurrent_ensures_share_one_download(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    manifest = publish(tmp_path, client, "shared", {"model.bin": os.urandom(4 * MiB)})
    cache = make_cache()
    barrier = threading.Barrier(8)
    results = []

    def one() -> None:
        barrier.wait()
        results.append(cache.ensure("shared", "s3://models/shared", pin=True))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and len({r.path for r in results}) == 1
    assert metric(cache, "thaw_cache_fetched_bytes_total") == manifest.total_bytes
    misses = metric(cache, "thaw_cache_misses_total", model="shared")
    hits = metric(cache, "thaw_cache_hits_total", model="shared")
    assert misses == 1 and misses + hits <= 8
    assert cache.holds("shared") is not None and cache.holds("shared").pins == 8  # type: ignore[union-attr]


def test_not_found_and_mismatches(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    manifest = publish(tmp_path, client, "named", {"a": b"1"})
    cache = make_cache()
    with pytest.raises(NotCachedError, match="no manifest at s3://models/nothing-here"):
        cache.ensure("nothing-here", "s3://models/nothing-here")
    with pytest.raises(NotCachedError, match="no S3 location is known"):
        cache.ensure("nothing-here")
    with pytest.raises(SourceMismatchError, match="manifest of model 'named', not 'other'"):
        cache.ensure("other", "s3://models/named")
    with pytest.raises(SourceMismatchError, match="is not at s3://models/named"):
        cache.ensure("named", "s3://models/named", revision="0" * 64)
    with pytest.raises(ManifestError, match="revision = 'abc'"):
        cache.ensure("named", "s3://models/named", revision="abc")
    # with a default source the name alone is enough
    cache = make_cache(default_source=parse_s3_uri("s3://models"))
    assert cache.ensure("named").revision == manifest.revision


def test_pins(tmp_path: Path, client: S3Client, make_cache: CacheFactory) -> None:
    publish(tmp_path, client, "pinme", {"a": b"1"})
    cache = make_cache()
    with pytest.raises(NotCachedError):
        cache.pin("pinme")
    assert cache.ensure("pinme", "s3://models/pinme", pin=True).pins == 1
    assert cache.pin("pinme").pins == 2
    assert cache.unpin("pinme").pins == 1
    assert cache.unpin("pinme").pins == 0
    with pytest.raises(PinError, match="is not pinned"):
        cache.unpin("pinme")


def test_cached_model_is_served_when_s3_is_unreachable(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    publish(tmp_path, client, "offline", {"a": b"1"})
    r = make_cache().ensure("offline", "s3://models/offline")
    dead = S3Client(
        S3Settings(
            endpoint_url="http://127.0.0.1:9",
            access_key_id="x",
            secret_access_key="y",
            max_attempts=1,
            connect_timeout_s=1,
        )
    )
    cache = make_cache(s3_client=dead)
    hit = cache.ensure("offline", "s3://models/offline")
    assert (hit.tier, hit.path) == ("hit", r.path)


def test_lru_eviction_skips_pinned(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    for name in ("lru-a", "lru-b", "lru-c"):
        publish(tmp_path, client, name, {"w.bin": os.urandom(30_000)})
    cache = make_cache(budget_bytes=70_000)
    clock = cache.clock
    assert isinstance(clock, ManualClock)
    a = cache.ensure("lru-a", "s3://models/lru-a", pin=True)
    clock.advance(10)
    b = cache.ensure("lru-b", "s3://models/lru-b")
    clock.advance(10)
    c = cache.ensure("lru-c", "s3://models/lru-c")  # a is older but pinned: b goes
    assert a.path.exists() and not b.path.exists() and c.path.exists()
    assert metric(cache, "thaw_cache_evictions_total", model="lru-b") == 1
    assert {m.name for m in cache.models()} == {"lru-a", "lru-c"}
    cache.pin("lru-c")
    with pytest.raises(BudgetError, match="does not fit"):
        cache.ensure("lru-b", "s3://models/lru-b")
    assert a.path.exists() and c.path.exists()
    cache.unpin("lru-a")
    clock.advance(10)
    cache.ensure("lru-b", "s3://models/lru-b")
    assert not a.path.exists() and c.path.exists()


def test_cached_revision_is_served_until_a_refresh(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    v1 = publish(tmp_path, client, "revs", {"w.bin": b"one"})
    cache = make_cache()
    assert cache.ensure("revs", "s3://models/revs").revision == v1.revision
    v2 = push(
        write_model(tmp_path / "v2" / "revs", {"w.bin": b"two!"}),
        S3Location("models", "revs"),
        client,
    )
    assert v2.revision != v1.revision
    stale = cache.ensure("revs", "s3://models/revs")  # no S3 request: the disk's revision
    assert (stale.tier, stale.revision) == ("hit", v1.revision)
    clock = cache.clock
    assert isinstance(clock, ManualClock)
    clock.advance(1)
    fresh = cache.ensure("revs", "s3://models/revs", refresh=True)
    assert (fresh.tier, fresh.revision) == ("miss", v2.revision)
    assert (fresh.path / "w.bin").read_bytes() == b"two!"
    assert cache.ensure("revs").revision == v2.revision  # the most recently used one now
    assert cache.ensure("revs", revision=v1.revision).tier == "hit"
    assert sorted(m.revision for m in cache.models()) == sorted([v1.revision, v2.revision])


def test_a_hit_does_not_wait_behind_a_pull_and_close_stops_pulls(
    tmp_path: Path, client: S3Client, make_cache: CacheFactory
) -> None:
    publish(tmp_path, client, "quick", {"w.bin": b"q"})
    publish(tmp_path, client, "slow", {"w.bin": os.urandom(4 * MiB)})
    slow_pull = PullConfig(chunk_bytes=256 * 1024, concurrency=2, max_bytes_per_s=MiB)
    cache = make_cache(pull=slow_pull)
    cache.ensure("quick", "s3://models/quick")
    pulling = cache.ensure_future("slow", "s3://models/slow")
    while not any(m.name == "slow" and m.state == "pulling" for m in cache.models()):
        assert not pulling.done(), pulling.exception()
        time.sleep(0.01)
    assert cache.ensure("quick", "s3://models/quick").tier == "hit"
    assert not pulling.done()  # the 4 MiB pull at 1 MiB/s is still running
    cache.close()
    from model_cache.puller import PullStoppedError

    with pytest.raises(PullStoppedError, match="shutting down"):
        pulling.result()
    [slow] = [m for m in cache.models() if m.name == "slow"]
    assert slow.state == "partial"
