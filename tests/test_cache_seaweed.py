"""The model cache against SeaweedFS (``weed mini``: a real object store on disk that checks S3
signatures): the CLI end to end, and kill -9 of the agent in the middle of a 200 MB pull."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cache_servers import S3Server, seaweed_server
from procs import child, free_port, thaw_argv, wait_http_ok

from model_cache.manifest import MANIFEST_NAME, Manifest, parse_manifest
from model_cache.push import push, sha256_file
from model_cache.s3 import S3Location
from model_cache.store import Store

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweed_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def run_cli(s3: S3Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        thaw_argv("cache", *args),
        capture_output=True,
        text=True,
        env={**os.environ, **s3.env, **env},
        timeout=120,
    )


def test_cli_push_pull_ls(tmp_path: Path, s3: S3Server) -> None:
    src = tmp_path / "cli-model"
    (src / "tok").mkdir(parents=True)
    weights = os.urandom(5 * MiB + 3)
    (src / "model.bin").write_bytes(weights)
    (src / "tok" / "vocab.txt").write_text("a\nb\n")
    pushed = run_cli(s3, "push", str(src), "s3://models/cli/cli-model")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed cli-model revision " in pushed.stdout

    cache = tmp_path / "cache"
    pulled = run_cli(s3, "pull", "s3://models/cli/cli-model", "--dir", str(cache))
    assert pulled.returncode == 0, pulled.stderr
    assert "cli-model: 100%" in pulled.stderr  # the tqdm progress bar
    path = Path(pulled.stdout.splitlines()[-1])
    assert path.parent == cache / "models" / "cli-model"
    assert (path / "model.bin").read_bytes() == weights
    assert (path / "tok" / "vocab.txt").read_text() == "a\nb\n"
    again = run_cli(s3, "pull", "s3://models/cli/cli-model", "--dir", str(cache), "--no-progress")
    assert again.returncode == 0 and "already cached" in again.stdout

    ls = run_cli(s3, "ls", "--dir", str(cache))
    assert ls.returncode == 0
    assert "cli-model" in ls.stdout and "ready" in ls.stdout and str(path) in ls.stdout

    # SeaweedFS checks signatures: a wrong secret is refused, and the CLI says why
    wrong = run_cli(
        s3,
        "pull",
        "s3://models/cli/cli-model",
        "--dir",
        str(tmp_path / "other"),
        AWS_SECRET_ACCESS_KEY="not-the-secret",
    )
    assert wrong.returncode == 1
    assert "SignatureDoesNotMatch" in wrong.stderr or "AccessDenied" in wrong.stderr


def journaled_bytes(journal: Path) -> int:
    try:
        lines = journal.read_text().split("\n")[1:-1]
    except FileNotFoundError:
        return 0
    return sum(int(b) - int(a) for a, b in (line.split() for line in lines))


class FinalDirWatcher:
    """Polls ``<cache>/models`` and records every file it sees there with its size."""

    def __init__(self, models: Path) -> None:
        self.models = models
        self.seen: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.polls = 0

    def __enter__(self) -> FinalDirWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for dirpath, _, filenames in os.walk(self.models):
                for n in filenames:
                    full = os.path.join(dirpath, n)
                    try:
                        size = os.lstat(full).st_size
                    except FileNotFoundError:
                        continue
                    self.seen.setdefault(os.path.relpath(full, self.models), set()).add(size)
            self.polls += 1
            self._stop.wait(0.005)


def start_agent(s3: S3Server, cache: Path, log: Path) -> tuple[list[str], int]:
    port = free_port()
    argv = thaw_argv(
        "cache",
        "serve",
        "--dir",
        str(cache),
        "--budget-bytes",
        "1GB",
        "--port",
        str(port),
        "--s3-endpoint",
        s3.endpoint,
        "--chunk-bytes",
        "4MiB",
        "--concurrency",
        "4",
        "--sync-every-bytes",
        "4MiB",
        # SeaweedFS on loopback serves 200 MB in well under a second; the cap gives the test
        # seconds in which to kill the agent mid-pull.
        "--max-bytes-per-s",
        "50MB",
    )
    return argv, port


@pytest.mark.slow
def test_kill_9_mid_pull_then_resume(tmp_path: Path, s3: S3Server) -> None:
    src = tmp_path / "src" / "big"
    src.mkdir(parents=True)
    with open(src / "model.bin", "wb") as f:
        for _ in range(25):
            f.write(os.urandom(8 * MiB))  # 200 MiB of random bytes
    (src / "config.json").write_text('{"hidden_size": 8}')
    client = s3.client()
    manifest: Manifest = push(src, S3Location("models", "big"), client)
    client.close()
    total = manifest.total_bytes
    assert total > 200 * 10**6

    cache = tmp_path / "cache"
    parts = cache / ".partial" / "big" / f"{manifest.revision}.parts"
    journal = parts / f"{Store.part_id('model.bin')}.journal"
    body = {"s3_uri": "s3://models/big"}

    with FinalDirWatcher(cache / "models") as watcher:
        argv, port = start_agent(s3, cache, tmp_path / "agent1.log")
        with child(argv, env=s3.env, log_path=tmp_path / "agent1.log") as agent:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/health", 30, agent)
            failures: list[BaseException] = []

            def ensure_until_killed() -> None:
                try:
                    httpx.post(f"{url}/v1/models/big/ensure", json=body, timeout=120)
                except httpx.HTTPError as e:  # the agent dies under the request
                    failures.append(e)

            waiter = threading.Thread(target=ensure_until_killed)
            waiter.start()
            deadline = time.monotonic() + 60
            while journaled_bytes(journal) < 60 * MiB:
                assert time.monotonic() < deadline, "the pull never got to 60 MiB"
                assert agent.poll() is None
                time.sleep(0.005)
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
            waiter.join(30)
            assert failures, "the ensure should have died with the agent"
        done_before_restart = journaled_bytes(journal)
        assert 60 * MiB <= done_before_restart < total
        assert not (cache / "models" / "big").exists()
        seen_while_killed = dict(watcher.seen)

        argv, port = start_agent(s3, cache, tmp_path / "agent2.log")
        with child(argv, env=s3.env, log_path=tmp_path / "agent2.log") as agent:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/health", 30, agent)
            listed = httpx.get(f"{url}/v1/models").json()["data"]
            assert [(m["name"], m["state"]) for m in listed] == [("big", "partial")]
            r = httpx.post(f"{url}/v1/models/big/ensure", json=body, timeout=120)
            assert r.status_code == 200, r.text
            result = r.json()
            metrics_text = httpx.get(f"{url}/metrics").text
        time.sleep(0.05)  # one more poll of the final directory

    # it resumed: fewer bytes fetched than the model holds, the journaled ones were not fetched
    assert result["tier"] == "miss"
    assert result["resumed_bytes"] >= done_before_restart
    assert result["fetched_bytes"] + result["resumed_bytes"] == total
    assert result["fetched_bytes"] <= total - done_before_restart
    fetched_metric = next(
        float(line.split()[-1])
        for line in metrics_text.splitlines()
        if line.startswith("thaw_cache_fetched_bytes_total ")
    )
    assert fetched_metric == result["fetched_bytes"] < total

    # the final files verify against the manifest and the source
    final = cache / "models" / "big" / manifest.revision
    assert Path(result["path"]) == final
    assert parse_manifest((final / MANIFEST_NAME).read_bytes()) == manifest
    for f in manifest.files:
        assert sha256_file(final / f.path) == f.sha256
    assert (
        sha256_file(final / "model.bin")
        == hashlib.sha256((src / "model.bin").read_bytes()).hexdigest()
    )
    assert not parts.exists()

    # nothing partial was ever visible under a final name
    assert seen_while_killed == {}
    assert watcher.polls > 100
    sizes = {f.path: f.size_bytes for f in manifest.files} | {
        MANIFEST_NAME: len(manifest.to_json())
    }
    assert watcher.seen, "the watcher should have seen the final files"
    for rel, seen_sizes in watcher.seen.items():
        path = rel.split("/", 2)[2]  # big/<revision>/<path>
        assert seen_sizes == {sizes[path]}, (rel, seen_sizes)
