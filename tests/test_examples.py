"""Every example command in README.md (its fenced code blocks) and in every ``--help`` text (the
lines under "example:", "examples:" and "Start here:" of every ``thaw`` parser) is run here,
against real processes on 127.0.0.1.

How an example runs, and what stands in for what a laptop does not have:

- in a scratch directory, through ``bash -c``, with ``thaw`` and ``.venv/bin/thaw`` being this
  checkout's CLI (``tests/bin/thaw``);
- fixed ports (8080, 8000, 8001, 8070, 9000, 18000) become free ones, and a server started
  without ``--port`` (the controller: ``--xds-port``; the gateway: also ``--health-port`` and
  ``--admin-port``) gets its default's free stand-in; paths outside the scratch directory
  (``/var/cache/thaw``, ``/tmp/tiny``, ``~/.kube/config``, ``/etc/thaw/policy.yaml``, a model
  directory) move into it; S3 (``127.0.0.1:8333``, ``s3.local:8333``) is moto's server;
- where a command starts vLLM, ``thaw emulator`` answers instead (``tests/vllm_shim``, first on
  PYTHONPATH, is ``vllm.entrypoints.openai.api_server``); the tiny Llama is really built;
- ``kubectl apply`` is ``tests/bin/kubectl``, which validates what it would send (there is no
  cluster); ``--kubeconfig`` points at the Kubernetes API harness (``tests/kube_api.py``), and
  ``--in-cluster`` outside a pod must fail saying why; the gateway is the real Envoy, polling the
  controller example's xDS server;
- ``scripts/setup.sh`` and ``scripts/test.sh`` are what CI itself runs (``.ci/run``): checked to
  be so, not run from inside the tests.

``test_every_example_is_run`` fails when an example appears (or goes) without this file
saying how it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import REPO, free_port

from thaw.cli import build_parser

BIN = REPO / "tests" / "bin"
SHIM = REPO / "tests" / "vllm_shim"
TRACE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"
EXAMPLE_HEADINGS = ("example:", "examples:", "start here:")
DEFAULT_PORTS = (8080, 8000, 8001, 8070, 9000, 18000, 8081, 9901)

# -- collecting the examples -------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _commands(lines: list[str]) -> list[str]:
    """Commands from indented lines: continuations joined, comments and descriptions dropped."""
    out: list[str] = []
    current = ""
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        current = f"{current} {text}".strip() if current else text
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        command = re.split(r"\s{2,}#|\s{2,}(?=[a-z])", current)[0]  # a trailing note or comment
        out.append(re.sub(r"\s+", " ", command).strip())
        current = ""
    return out


def help_examples() -> list[str]:
    found: list[str] = []
    for parser in _parsers(build_parser()):
        text = f"{parser.description or ''}\n{parser.epilog or ''}"
        block: list[str] | None = None
        for line in [*text.splitlines(), "END"]:
            if line.strip().lower() in EXAMPLE_HEADINGS:
                block = []
            elif block is not None and (line.startswith("  ") or not line.strip()):
                block.append(line)
            elif block is not None:
                found += _commands(block)
                block = None
    return list(dict.fromkeys(found))


def readme_examples() -> list[str]:
    found: list[str] = []
    text = (REPO / "README.md").read_text()
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL):
        if lang == "bash":
            found += _commands(["  " + ln for ln in body.splitlines()])
        elif lang == "python":
            found.append("python: " + " ".join(body.split()))
    return list(dict.fromkeys(found))


# -- running them ------------------------------------------------------------------------------


def ctrl_c_delivered() -> None:
    """In the child before exec: SIGINT back to its default. A suite started in the background
    of a non-interactive shell inherits SIGINT ignored, and Python keeps an inherited ignore (no
    KeyboardInterrupt), so the example's Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Sandbox:
    """A scratch directory, the environment examples run in, and their ports."""

    def __init__(self, tmp: Path, s3_endpoint: str | None = None) -> None:
        self.tmp = tmp
        self.ports = {p: free_port() for p in DEFAULT_PORTS}
        self.s3_endpoint = s3_endpoint
        venv_bin = tmp / ".venv" / "bin"
        venv_bin.mkdir(parents=True, exist_ok=True)
        (venv_bin / "thaw").symlink_to(BIN / "thaw")
        fallback = tmp / "fallback-bin"  # only what the system lacks
        fallback.mkdir(exist_ok=True)
        if shutil.which("less") is None:
            (fallback / "less").symlink_to(shutil.which("cat") or "/bin/cat")
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join(
                [str(BIN), str(Path(sys.executable).parent), os.environ["PATH"], str(fallback)]
            ),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(SHIM), str(REPO), os.environ.get("PYTHONPATH")) if p
            ),
            "THAW_PYTHON": sys.executable,
            "KUBECONFIG": str(tmp / "kubeconfig"),
            "HOME": str(tmp),
        }
        self.servers: list[subprocess.Popen[bytes]] = []

    def url(self, default_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[default_port]}"

    def localize(self, command: str) -> str:
        """The example as it runs here (see the module docstring)."""
        t = str(self.tmp)
        for outside, inside in (
            ("/var/cache/thaw", f"{t}/var-cache-thaw"),
            ("/tmp/tiny", f"{t}/tmp-tiny"),
            ("/tmp/c ", f"{t}/tmp-c "),
            ("/models/qwen2-0.5b", f"{t}/models/qwen2-0.5b"),
            ("~/.kube/config", f"{t}/kubeconfig"),
            ("/etc/thaw/policy.yaml", f"{t}/etc-thaw-policy.yaml"),
            ("/mnt/nvme/", f"{t}/mnt-nvme/"),
        ):
            command = command.replace(outside, inside)
        if self.s3_endpoint:
            for s3 in ("http://127.0.0.1:8333", "http://s3.local:8333"):
                command = command.replace(s3, self.s3_endpoint)
        command = re.sub(r"\bDIR\b", f"{t}/dir", command)
        command = re.sub(
            r"(?<![\d.])(8080|8000|8001|8070|9000|18000)(?!\d)",
            lambda m: str(self.ports[int(m.group(1))]),
            command,
        )
        defaults = (
            ("thaw up", "--port", 8080),
            ("thaw engine", "--port", 8000),
            ("thaw emulator", "--port", 8000),
            ("thaw cache serve", "--port", 8070),
            ("thaw knative controller", "--xds-port", 18000),
            ("thaw knative gateway", "--port", 8080),
            ("thaw knative gateway", "--health-port", 8081),
            ("thaw knative gateway", "--admin-port", 9901),
        )
        for head, flag, port in defaults:
            starts = command.startswith(head) or command.startswith(f".venv/bin/{head}")
            given = re.search(rf"(?<![\w-]){flag}\b", command) is not None
            if starts and not given and "--config engine.yaml" not in command:
                at = command.index(head) + len(head)
                command = f"{command[:at]} {flag} {self.ports[port]}{command[at:]}"
        return command

    def run(self, example: str, *, rc: int = 0, timeout_s: float = 300) -> str:
        command = self.localize(example)
        done = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=self.tmp,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert done.returncode == rc, (example, command, done.stdout[-3000:], done.stderr[-3000:])
        return done.stdout + "\n" + done.stderr

    @contextlib.contextmanager
    def server(self, example: str, health: str, timeout_s: float = 90) -> Iterator[None]:
        """Start ``example`` and wait until ``health`` (a URL) answers 200; stop it after."""
        command = self.localize(example)
        log = self.tmp / f"server-{len(self.servers)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.tmp,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=ctrl_c_delivered,
            )
        self.servers.append(proc)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                assert proc.poll() is None, (example, command, log.read_text()[-3000:])
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(health, timeout=2) as resp:
                        if resp.status == 200:
                            break
                assert time.monotonic() < deadline, (example, log.read_text()[-3000:])
                time.sleep(0.2)
            yield
        finally:
            for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue


# -- the scenarios: each example is in exactly one --------------------------------------------

CLI = [
    ".venv/bin/thaw policy show-default > my.yaml",
    ".venv/bin/thaw policy check my.yaml",
    ".venv/bin/thaw policy schema",
    "thaw policy show-default > thaw.yaml",
    "thaw policy check thaw.yaml",
    "thaw policy check --runtime knative thaw.yaml",
    "thaw policy support",
    "thaw policy schema | python -m json.tool | less",
    "thaw policy schema > thaw-policy.schema.json",
    "thaw model build-tiny DIR",
    "thaw model build-tiny .thaw/models/tiny-llama",
    "thaw model build-tiny /tmp/tiny --seed 7 --force",
    "thaw knative render --config policy.yaml --out services.yaml",
    "thaw knative render --config policy.yaml | kubectl apply -f -",
    "thaw knative render --config policy.yaml --device-plugin-config | kubectl apply -f -",
    "thaw sim calibrate",
    "thaw sim calibrate --engine vllm --out local.yaml",
    "thaw sim --trace mooncake.jsonl --fleet fleet.yaml --config thaw.yaml --duration-s 600 "
    "--slo-ttft-s 2 --slo-ttft-per-token-s 0.0001 --out out/",
]
SIM = [
    "thaw sim --trace AzureLLMInferenceTrace_conv.csv --fleet sim/examples/fleet.yaml --config "
    "sim/examples/policy.yaml --models 20 --zipf 1.0 --compare kpa,always-on --out out/",
    ".venv/bin/thaw sim --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv --models 20 "
    "--compare kpa,always-on,predictive --out sim-out",
    ".venv/bin/thaw sim --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv --models 200 "
    "--fleet sim/examples/fleet-shared.yaml --compare kpa --out shared-out",
    ".venv/bin/thaw sim plan --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv --models 200 "
    "--slo-target 0.99 --out plan-out",
    "thaw sim plan --trace AzureLLMInferenceTrace_conv.csv --models 200 --out plan/",
    "thaw sim plan --trace code.csv --models 20 --slo-target 0.95 --policies thaw,kpa --out plan/",
    "thaw sim plan --trace t.csv --pools h100 --max-gpus 512 --out plan/",
]
UP = [
    "scripts/setup.sh && .venv/bin/thaw up",
    "thaw up",
    "curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' -d "
    '\'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}\'',
    "curl http://127.0.0.1:8080/metrics | grep thaw_",
    "curl -s http://127.0.0.1:8080/metrics | grep '^thaw_'",
    'python: from openai import OpenAI client = OpenAI(base_url="http://127.0.0.1:8080/v1", '
    'api_key="unused") print(client.chat.completions.create(model="tiny-llama", '
    'messages=[{"role": "user", "content": "hi"}]).choices[0].message.content)',
    ".venv/bin/thaw up --config my.yaml",
    "thaw up --config thaw.yaml",
    "thaw up --config my-models.yaml --port 9000",
]
ENGINES = [
    "thaw emulator",
    "thaw emulator --port 8000 --served-model-name tiny-llama --load-time-s 5",
    "curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' -d "
    '\'{"model": "tiny-llama", "prompt": "hello", "max_tokens": 8}\'',
    "curl http://127.0.0.1:8000/metrics | grep vllm:num_requests",
    "thaw emulator --config engine.yaml --max-num-seqs 4",
    "thaw engine",
    "thaw engine --port 8001 -- --max-num-seqs 4",
    "thaw engine --model /models/qwen2-0.5b --served-model-name qwen",
    "thaw engine --model .thaw/models/tiny-llama",
    "thaw engine --model DIR",
    "thaw emulator --gpu-id 0 --gpu-memory-bytes 80000000000 --gpu-memory-utilization 0.45",
]
#: 16 GB to write: started, seen writing, interrupted (Ctrl-C), and checked to leave nothing.
BUILD_8B = ["thaw model build-tiny /mnt/nvme/llama-8b-random --shape 8b"]
CACHE = [
    "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...",
    "thaw cache push ./tiny-llama s3://models/tiny-llama --s3-endpoint http://127.0.0.1:8333",
    "thaw cache pull s3://models/tiny-llama --dir /var/cache/thaw --s3-endpoint "
    "http://127.0.0.1:8333",
    "thaw cache ls --dir /var/cache/thaw",
    "thaw cache ls --dir /var/cache/thaw --json",
    "thaw cache serve --dir /var/cache/thaw --budget-bytes 200G --s3-endpoint "
    "http://127.0.0.1:8333 --s3-prefix s3://models",
    "curl -X POST http://127.0.0.1:8070/v1/models/tiny-llama/ensure",
    "curl -X POST localhost:8070/v1/models/tiny-llama/ensure -H 'content-type: application/json' "
    '-d \'{"s3_uri": "s3://models/tiny-llama"}\'',
    "curl -X POST localhost:8070/v1/models/tiny-llama/pin",
    "thaw cache serve --dir /var/cache/thaw --budget-bytes 500GiB --s3-endpoint "
    "http://s3.local:8333",
    "thaw cache serve --dir /tmp/c --budget-bytes 2000000000 --s3-prefix s3://models --port 9000",
]
KNATIVE = [
    "thaw knative controller --kubeconfig ~/.kube/config --namespace llm --tick-s 1",
    "thaw knative controller --in-cluster --config /etc/thaw/policy.yaml --xds-port 18000",
    "thaw knative gateway --xds-url http://127.0.0.1:18000 --port 8080",
    "curl -s localhost:8080/v1/models",
    "thaw knative gateway --print-bootstrap > bootstrap.json",
]
CI_ITSELF = ["scripts/test.sh"]
SCENARIOS = {
    "cli": CLI,
    "sim": SIM,
    "up": UP,
    "engines": ENGINES,
    "cache": CACHE,
    "knative": KNATIVE,
    "build-8b": BUILD_8B,
    "ci": CI_ITSELF,
}


def test_every_example_is_run() -> None:
    collected = set(help_examples()) | set(readme_examples())
    covered = [e for examples in SCENARIOS.values() for e in examples]
    assert len(covered) == len(set(covered)), "an example is in two scenarios"
    missing = sorted(collected - set(covered))
    stale = sorted(set(covered) - collected)
    assert not missing, f"examples no test runs (add each to a scenario here): {missing}"
    assert not stale, f"scenarios run examples no text shows any more: {stale}"


def test_ci_runs_the_test_script_after_setup() -> None:
    """`scripts/test.sh` is CI's own entry point, and it runs `scripts/setup.sh` first; the
    `.venv/bin/thaw up` after `setup.sh` is run in the `up` scenario."""
    assert "exec scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "\nscripts/setup.sh\n" in (REPO / "scripts" / "test.sh").read_text()


def _policy_with_cluster(path: Path) -> None:
    doc = yaml_load((REPO / "manifests" / "policy.yaml").read_text())
    path.write_text(doc["data"]["policy.yaml"])


def yaml_load(text: str) -> dict[str, object]:
    import yaml

    return yaml.safe_load(text)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_cli_examples(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    _policy_with_cluster(tmp_path / "policy.yaml")
    shutil.copy(REPO / "sim" / "examples" / "fleet.yaml", tmp_path / "fleet.yaml")
    with open(tmp_path / "mooncake.jsonl", "w") as f:  # Mooncake's trace format, 2 minutes
        for i in range(200):
            f.write(json.dumps({"timestamp": i * 600, "input_length": 500, "output_length": 50}))
            f.write("\n")
    outputs = {example: sb.run(example) for example in CLI}
    assert "valid" in outputs["thaw policy check thaw.yaml"]
    assert "valid" in outputs["thaw policy check --runtime knative thaw.yaml"]
    assert "| `models[].activator.max_body_bytes` |" in outputs["thaw policy support"]
    assert (
        '"title": "Thaw policy file"' in outputs["thaw policy schema | python -m json.tool | less"]
    )
    assert (tmp_path / "dir" / "config.json").exists()
    assert (tmp_path / "tmp-tiny" / "model.safetensors").exists()
    assert "created" in outputs["thaw knative render --config policy.yaml | kubectl apply -f -"]
    plugin = outputs[
        "thaw knative render --config policy.yaml --device-plugin-config | kubectl apply -f -"
    ]
    assert "configmap.core/thaw-time-slicing created" in plugin, plugin
    assert (tmp_path / "services.yaml").read_text().count("kind: Service") >= 1
    assert "engine_start_s" in outputs["thaw sim calibrate"]
    assert (tmp_path / "local.yaml").exists()
    assert (tmp_path / "out" / "report.json").exists()


@pytest.mark.slow
def test_sim_examples(tmp_path: Path) -> None:
    """The Azure trace at ../shared/traces (or, where the checkout has none, a synthetic one in
    the same format at the same relative place); ``code.csv`` and ``t.csv`` are its first ten
    minutes (``tests/data/traces``)."""
    work = tmp_path / "repo"
    work.mkdir()
    sb = Sandbox(work)
    (work / "sim").symlink_to(REPO / "sim")
    traces = tmp_path / "shared" / "traces"
    traces.mkdir(parents=True)
    if TRACE.exists():
        shutil.copy(TRACE, traces / TRACE.name)
    else:
        lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
        lines += [f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.000000,800,120" for i in range(3000)]
        (traces / TRACE.name).write_text("\n".join(lines) + "\n")
    shutil.copy(traces / TRACE.name, work / TRACE.name)
    for name in ("code.csv", "t.csv"):
        shutil.copy(REPO / "tests" / "data" / "traces" / "azure_conv_first10min.csv", work / name)
    outputs = {example: sb.run(example, timeout_s=600) for example in SIM}
    assert json.loads((work / "out" / "report.json").read_text())
    assert json.loads((work / "sim-out" / "report.json").read_text())
    shared = json.loads((work / "shared-out" / "report.json").read_text())
    assert all(p["models_per_gpu"] > 1 for p in shared["policies"].values())
    assert json.loads((work / "plan-out" / "report.json").read_text())["equal_slo"]
    assert "always-on" in outputs[SIM[-1]] and "thaw" in outputs[SIM[-1]]


@pytest.mark.slow
def test_up_examples(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    base = sb.url(8080)
    sb.run(".venv/bin/thaw policy show-default > my.yaml")
    sb.run("thaw policy show-default > thaw.yaml")
    sb.run("thaw policy show-default > my-models.yaml")
    # `scripts/setup.sh &&` is what CI runs before the tests; the rest runs here.
    with sb.server(".venv/bin/thaw up", f"{base}/health"):
        chat = sb.run(UP[2], timeout_s=180)  # waits through the tiny Llama's build and start
        assert '"role":"assistant"' in chat.replace(" ", ""), chat
        for example in UP[3:6]:
            out = sb.run(example) if not example.startswith("python:") else _python(sb, example)
            assert out.strip(), example
    for example in UP[1:2] + UP[6:]:
        port = 9000 if "--port 9000" in example else 8080
        with sb.server(example, f"{sb.url(port)}/health"):
            pass


def _python(sb: Sandbox, example: str) -> str:
    code = example.removeprefix("python: ").replace(" client = ", "\nclient = ")
    code = code.replace(" print(", "\nprint(").replace("http://127.0.0.1:8080", sb.url(8080))
    done = subprocess.run(
        [sys.executable, "-c", code], env=sb.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_engine_examples(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb.run("thaw model build-tiny .thaw/models/tiny-llama")
    shutil.copytree(tmp_path / ".thaw" / "models" / "tiny-llama", tmp_path / "models/qwen2-0.5b")
    shutil.copytree(tmp_path / ".thaw" / "models" / "tiny-llama", tmp_path / "dir")
    with sb.server("thaw emulator --port 8000 --served-model-name tiny-llama --load-time-s 5",
                   f"{sb.url(8000)}/health"):  # fmt: skip
        assert '"text_completion"' in sb.run(ENGINES[2])
        assert "vllm:num_requests_running" in sb.run(ENGINES[3])
    (tmp_path / "engine.yaml").write_text(f"port: {sb.ports[8000]}\nload_time_s: 0.5\n")
    with sb.server("thaw emulator --config engine.yaml --max-num-seqs 4", f"{sb.url(8000)}/health"):
        pass
    for example in ("thaw emulator", *ENGINES[5:-1]):
        port = 8001 if "--port 8001" in example else 8000
        with sb.server(example, f"{sb.url(port)}/health"):
            pass
    # The emulated GPU's ledger (default: under the temporary directory) holds 0.45 x 80 GB.
    sb.env["TMPDIR"] = str(tmp_path)
    with sb.server(ENGINES[-1], f"{sb.url(8000)}/health"):
        ledger = json.loads((tmp_path / "thaw-gpu-ledger" / "gpu-0.json").read_text())
        assert ledger["memory_bytes"] == 80_000_000_000, ledger
        assert [e["bytes"] for e in ledger["engines"].values()] == [36_000_000_000], ledger


@pytest.mark.slow
def test_build_8b_example(tmp_path: Path) -> None:
    """The 8B build runs until it has written 64 MiB of weights into its staging directory, then
    Ctrl-C: it exits 130, and neither the model directory nor its staging remains (the full 16 GB
    is bench/gpu_warm_pool.py's, on a GPU machine)."""
    sb = Sandbox(tmp_path)
    (example,) = BUILD_8B
    parent = tmp_path / "mnt-nvme"
    log = tmp_path / "build.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {sb.localize(example)}"],
            cwd=tmp_path,
            env=sb.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=ctrl_c_delivered,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            staged = list(parent.glob(".llama-8b-random.building-*/model.safetensors"))
            if staged and staged[0].stat().st_size > 64 * 2**20:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the 8B build wrote no weights in 120 s"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(20)  # else killed below, long before the 16 GB are written
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, log.read_text()[-3000:]  # thaw's exit on Ctrl-C
    assert list(parent.iterdir()) == []  # no model directory, no staging left behind


@pytest.mark.slow
def test_cache_examples(tmp_path: Path) -> None:
    from cache_servers import moto_server

    from model_cache.tiny_model import build_tiny_llama

    with moto_server(tmp_path) as s3:
        sb = Sandbox(tmp_path, s3_endpoint=s3.endpoint)
        sb.env.update(s3.env)
        build_tiny_llama(tmp_path / "tiny-llama")
        for example in CACHE[:5]:
            sb.run(example)
        assert "tiny-llama" in sb.run("thaw cache ls --dir /var/cache/thaw --json")
        with sb.server(CACHE[5], f"{sb.url(8070)}/health"):
            for example in CACHE[6:9]:
                out = sb.run(example)
                assert '"error"' not in out, (example, out)
        with sb.server(CACHE[9], f"{sb.url(8070)}/health"):
            pass
        with sb.server(CACHE[10], f"{sb.url(9000)}/health"):
            pass


@pytest.mark.slow
async def test_knative_examples(tmp_path: Path) -> None:
    from knative_world import kube_api, write_kubeconfig

    sb = Sandbox(tmp_path)
    async with kube_api() as (api, server):
        write_kubeconfig(tmp_path / "kubeconfig", server)
        await asyncio.to_thread(_knative, sb, api)


def _knative(sb: Sandbox, api: object) -> None:
    controller, in_cluster_controller, gateway, models, print_bootstrap = KNATIVE
    # The controller leads and serves the gateway's routes over xDS; the gateway (the real
    # Envoy) is ready once the controller has answered, and lists the routed models.
    with sb.server(controller, f"http://127.0.0.1:{sb.ports[18000]}/ready"):
        assert "leader election: create the lease" in (sb.tmp / "server-0.log").read_text()
        with sb.server(gateway, f"http://127.0.0.1:{sb.ports[8081]}/ready"):
            listing = json.loads(sb.run(models))
            assert listing["object"] == "list" and listing["data"] == [], listing
    sb.run(print_bootstrap)
    assert json.loads((sb.tmp / "bootstrap.json").read_text())["static_resources"]
    _policy_with_cluster(sb.tmp / "etc-thaw-policy.yaml")
    out = sb.run(in_cluster_controller, rc=2)  # outside a pod: says what is missing
    assert "in-cluster service account" in out, out
