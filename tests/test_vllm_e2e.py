"""Real vLLM CPU on the tiny Llama, end to end: the OpenAI API (plain and streaming, with the
official ``openai`` client and raw HTTP), ``/metrics`` read by the autoscaler's parser, sleep and
wake-up behind Thaw's engine guard (``--middleware``: control endpoints refused without Thaw's
credential, readiness 503 while asleep), and no orphans after a clean stop or after the launcher
dies by SIGKILL.

Two vLLM starts (about 40 s each on 2 cores): one by ``thaw engine``, which the first test kills,
then one started in this process and shared by the rest of the module. The cold-start
time and the memory of the engine's processes are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from procs import alive, free_port, kill_all, thaw_argv, wait_all_gone

from engine.metrics import parse_engine_metrics
from engine.process import EngineProcess, vllm_spec
from engine.vllm_site.thaw_engine_guard import CREDENTIAL_HEADER, READY_PATH
from model_cache.tiny_model import build_tiny_llama

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed (setup.sh)"),
]

NAME = "tiny-llama"
CREDENTIAL = "vllm-e2e-credential"
THAW = {CREDENTIAL_HEADER: CREDENTIAL}


# -- /proc, read independently of the launcher -----------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: state, ppid, pgrp, ...; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB: RSS counts shared pages in every process, PSS splits
    them."""
    rss_kb = pss_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss_kb += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss_kb += int(line.split()[1])
        except OSError:
            continue
    return rss_kb / 1024, pss_kb / 1024


# -- 1. `thaw engine`, then SIGKILL it: vLLM's whole group goes ----------------------------


def test_thaw_engine_serves_and_its_death_by_sigkill_takes_the_vllm_group(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "engine.log"
    thaw = subprocess.Popen(
        thaw_argv("engine", "--port", str(port), "--log", str(log_path)),
        cwd=tmp_path,  # the tiny model is built into ./.thaw/models/tiny-llama
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        assert thaw.stdout is not None
        output = []
        for line in thaw.stdout:
            output.append(line)
            if "Ctrl-C stops it." in line or line.startswith("thaw engine:"):
                break
        text = "".join(output)
        assert "Ctrl-C stops it." in text, text + log_path.read_text()[-3000:]
        assert (tmp_path / ".thaw/models/tiny-llama/config.json").is_file()
        base_url = f"http://127.0.0.1:{port}"
        assert f"curl {base_url}/v1/chat/completions" in text
        assert f'OpenAI(base_url="{base_url}/v1"' in text
        print("\n" + next(line for line in output if "cold start" in line).strip())
        resp = httpx.post(
            f"{base_url}/v1/completions",
            json={"model": NAME, "prompt": "Once upon a time", "max_tokens": 4},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        supervisor = next(
            p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
            if (fields := stat_fields(p)) is not None and int(fields[1]) == thaw.pid
        )  # fmt: skip
        pids = group_members(supervisor)
        names = sorted(comm(p) for p in pids)
        assert "VLLM::EngineCor" in names and "VLLM::Worker" in names  # grandchildren exist
        os.kill(thaw.pid, signal.SIGKILL)
        thaw.wait(timeout=10)
        assert wait_all_gone(pids, 20.0) == [], [comm(p) for p in pids if alive(p)]
    finally:
        kill_all([thaw.pid, *pids])
        thaw.wait(timeout=10)
        if thaw.stdout is not None:
            thaw.stdout.close()


# -- 2. one engine for the rest of the module --------------------------------------------------


@dataclass
class Vllm:
    engine: EngineProcess
    base_url: str
    pids: list[int]
    log_path: Path


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vllm]:
    tmp = tmp_path_factory.mktemp("vllm")
    model = build_tiny_llama(tmp / "tiny-llama")
    log_path = tmp / "vllm.log"
    credential = tmp / "credential"
    credential.write_text(CREDENTIAL + "\n")
    spec = vllm_spec(
        str(model),
        port=free_port(),
        served_model_name=NAME,
        log_path=log_path,
        credential_file=str(credential),
    )
    engine = EngineProcess(spec)
    pids: list[int] = []
    try:
        asyncio.run(engine.start())
        assert engine.pid is not None
        pids = group_members(engine.pid)
        rss_mb, pss_mb = memory_mb(pids)
        print(
            f"\nvLLM CPU cold start (start() to /health 200): {engine.startup_s:.1f} s; "
            f"{len(pids)} processes {sorted(comm(p) for p in pids)}: "
            f"RSS {rss_mb:.0f} MiB summed, PSS {pss_mb:.0f} MiB"
        )
        yield Vllm(engine=engine, base_url=engine.base_url, pids=pids, log_path=log_path)
    finally:
        asyncio.run(engine.stop(30.0))
        kill_all(pids)


@pytest.fixture(scope="module")
def client(vllm: Vllm) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{vllm.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_the_group_is_api_server_engine_core_and_worker(vllm: Vllm) -> None:
    names = [comm(p) for p in vllm.pids]
    assert "VLLM::EngineCor" in names and "VLLM::Worker" in names
    assert vllm.engine.running


def test_models_lists_the_served_name(vllm: Vllm) -> None:
    body = httpx.get(f"{vllm.base_url}/v1/models").json()
    assert [m["id"] for m in body["data"]] == [NAME]


def test_completions_with_the_openai_client(client: OpenAI) -> None:
    result = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=8, temperature=0.8
    )
    assert result.object == "text_completion"
    assert isinstance(result.choices[0].text, str)
    assert result.choices[0].finish_reason in ("length", "stop")
    assert result.usage is not None and 1 <= result.usage.completion_tokens <= 8


@pytest.mark.parametrize("prompt", ["hi", "a", "Once"])
def test_completions_of_a_one_token_prompt(vllm: Vllm, prompt: str) -> None:
    """Without the AMX sitecustomize, vLLM CPU 0.32 dies of SIGILL on this (on AMX CPUs)."""
    resp = httpx.post(
        f"{vllm.base_url}/v1/completions",
        json={"model": NAME, "prompt": prompt, "max_tokens": 4},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert vllm.engine.running


def test_completions_raw_http(vllm: Vllm) -> None:
    resp = httpx.post(
        f"{vllm.base_url}/v1/completions",
        json={"model": NAME, "prompt": "The quick brown fox", "max_tokens": 5},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion" and body["model"] == NAME
    assert body["usage"]["prompt_tokens"] >= 2


def test_chat_with_the_openai_client(client: OpenAI) -> None:
    result = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert isinstance(result.choices[0].message.content, str)
    # The chat template's tokens: BOS, two headers and an <|eot_id|> around "user" and "hi".
    assert result.usage is not None and result.usage.prompt_tokens >= 8


def test_chat_raw_http(vllm: Vllm) -> None:
    resp = httpx.post(
        f"{vllm.base_url}/v1/chat/completions",
        json={
            "model": NAME,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
            ],
            "max_tokens": 6,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"


def test_chat_streaming_raw_sse(vllm: Vllm) -> None:
    request = {
        "model": NAME,
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 8,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{vllm.base_url}/v1/chat/completions", json=request, timeout=60
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert len(chunks) >= 3 and isinstance(text, str)


def test_chat_streaming_with_the_openai_client(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_metrics_parse_with_the_autoscalers_parser(vllm: Vllm) -> None:
    text = httpx.get(f"{vllm.base_url}/metrics").text
    assert "vllm:num_requests_waiting{" in text and "vllm:kv_cache_usage_perc{" in text
    metrics = parse_engine_metrics(text)
    assert metrics.num_requests_waiting == 0 and metrics.num_requests_running == 0
    assert 0.0 <= metrics.kv_cache_usage_ratio <= 1.0
    assert metrics.sleeping is False


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sleep?level=1"),
        ("POST", "/wake_up"),
        ("GET", "/is_sleeping"),
        ("POST", "/collective_rpc"),
        ("POST", "/reset_prefix_cache"),
        ("GET", "/server_info"),
        ("POST", "/pause"),
        ("POST", "/update_weights"),
        ("POST", "//sleep"),
    ],
)
def test_the_guard_refuses_control_requests_without_thaws_credential(
    vllm: Vllm, method: str, path: str
) -> None:
    for headers in ({}, {CREDENTIAL_HEADER: "a guess"}, {"authorization": f"Bearer {CREDENTIAL}"}):
        resp = httpx.request(method, vllm.base_url + path, headers=headers, timeout=30)
        assert resp.status_code == 403, (path, headers, resp.text)
        assert "is Thaw's only" in resp.json()["error"]["message"]
    assert httpx.get(f"{vllm.base_url}{READY_PATH}").status_code == 200  # still awake


def test_sleep_pauses_and_wake_up_resumes(vllm: Vllm) -> None:
    """On CPU, /sleep?level=1 offloads nothing (vLLM logs "sleep mode is not supported on CPU")
    but it does pause the engine: a request waits until /wake_up, then completes. Only Thaw's
    credential sleeps and wakes it; readiness fails while it sleeps."""
    url = vllm.base_url
    rss_awake_mb, _ = memory_mb(vllm.pids)
    assert httpx.get(f"{url}{READY_PATH}").json() == {"ready": True}
    assert httpx.post(f"{url}/sleep", params={"level": 1}, timeout=30).status_code == 403
    assert httpx.get(f"{url}{READY_PATH}").status_code == 200
    resp = httpx.post(f"{url}/sleep", params={"level": 1}, headers=THAW, timeout=30)
    assert resp.status_code == 200
    try:
        assert httpx.get(f"{url}/is_sleeping", headers=THAW).json() == {"is_sleeping": True}
        ready = httpx.get(f"{url}{READY_PATH}")
        assert (ready.status_code, ready.json()) == (503, {"ready": False, "reason": "asleep"})
        assert httpx.get(f"{url}/health").status_code == 200  # alive: never restarted asleep
        assert parse_engine_metrics(httpx.get(f"{url}/metrics").text).sleeping is True
        rss_asleep_mb, _ = memory_mb(vllm.pids)
        assert rss_asleep_mb > 0.9 * rss_awake_mb  # nothing was freed
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                f"{url}/v1/completions",
                json={"model": NAME, "prompt": "while asleep", "max_tokens": 3},
                timeout=120,
            )
            time.sleep(2.0)
            assert not pending.done()  # paused, not refused
            assert httpx.post(f"{url}/wake_up", timeout=30).status_code == 403
            assert httpx.post(f"{url}/wake_up", headers=THAW, timeout=30).status_code == 200
            assert pending.result(timeout=60).status_code == 200
    finally:
        httpx.post(f"{url}/wake_up", headers=THAW, timeout=30)
    assert httpx.get(f"{url}/is_sleeping", headers=THAW).json() == {"is_sleeping": False}
    assert httpx.get(f"{url}{READY_PATH}").json() == {"ready": True}
    assert parse_engine_metrics(httpx.get(f"{url}/metrics").text).sleeping is False
    resp = httpx.post(
        f"{url}/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 3}, timeout=60
    )
    assert resp.status_code == 200


def test_stop_ends_every_vllm_process(vllm: Vllm) -> None:
    """Last in the module: a clean stop exits 0 and leaves none of the group's processes."""
    started = time.monotonic()
    code = asyncio.run(vllm.engine.stop(30.0))
    print(f"\nvLLM stopped in {time.monotonic() - started:.1f} s with status {code}")
    assert code == 0
    assert wait_all_gone(vllm.pids, 5.0) == []
