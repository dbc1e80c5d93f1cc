"""Two vLLM engines on one GPU: cold start from local disk vs wake from sleep level 1 and level 2.

What a warm pool on a shared GPU buys, measured on the engines themselves (real vLLM, behind
Thaw's engine guard, started by :mod:`engine.process` as ``thaw up`` starts them):

1. ``cold``: engine A starts on weights in local disk (the model's files are dropped from the page
   cache first, so they are read from the disk): process start to ``/health`` 200, then the first
   token of one request. This is the baseline every other row is divided by.
2. engine B starts beside A on the same GPU (two engines, ``--gpu-memory-utilization`` each).
3. ``wake_level1``: A sleeps at level 1 (weights to host RAM, KV cache dropped; the GPU memory it
   frees is shown), then a request arrives: wake (``/wake_up``) and its first token.
4. ``wake_level2``: A sleeps at level 2 (weights discarded), then a request arrives: vLLM's way
   back with the weights on disk (``/wake_up?tags=weights``, ``/collective_rpc`` ``reload_weights``,
   ``/wake_up?tags=kv_cache``, ``/reset_prefix_cache``; page cache dropped first) and its first
   token.

On a GPU the model is ``thaw model build-tiny --shape 8b`` (a random-weight Llama 3 8B, built once
into ``--work-dir``, about 40 s for 16 GB), and the goals are printed beside the figures (level-1
wake <= 0.5 s, local-disk cold start <= 3 s; anchors: vLLM sleep mode 0.26-0.8 s on A100,
ServerlessLLM 8B load 0.7 s from cache). It fits in 8 minutes on one GPU. On a CPU it runs the
tiny Llama on vLLM CPU and says what a CPU cannot show.

    .venv/bin/python bench/gpu_warm_pool.py                      # GPU if nvidia-smi, else CPU
    .venv/bin/python bench/gpu_warm_pool.py --work-dir /mnt/nvme/thaw-bench --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.process import EngineProcess, vllm_spec
from engine.vllm_site.thaw_engine_guard import CREDENTIAL_HEADER, READY_PATH
from model_cache.tiny_model import SHAPES, build_tiny_llama

CPU_CANNOT_SHOW = (
    "On a CPU vLLM refuses --enable-sleep-mode: /sleep only pauses the engine. Nothing is "
    "offloaded or freed (no GPU memory to give another model), a level-1 wake copies nothing "
    "back, a level-2 sleep discards nothing (reload_weights still rereads the files), and two "
    "engines share CPU RAM, not one GPU's memory. So the wake rows here are a resume, not vLLM's "
    "sleep mode; only the shape of the run (and the engine guard) is real. Run it on a GPU for "
    "the figures the issue asks for."
)


@dataclass
class Row:
    """One way a request met engine A, and what it took."""

    case: str
    ready_s: float  # cold: process start to /health 200; wake: the wake calls
    ttft_s: float  # the first request's first token, from its send
    total_s: float  # request arrival (or process start) to first token
    gpu_used_bytes: int | None = None  # after the case, all engines together


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpu_used_bytes() -> int | None:
    """GPU 0's memory in use (nvidia-smi), None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 else None


def drop_page_cache(model_dir: Path) -> None:
    """Ask the kernel to forget the model's files (written back first), so that the next read
    comes from the disk, not from RAM. No root needed: posix_fadvise(DONTNEED) per file."""
    for f in model_dir.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def first_token_s(session: aiohttp.ClientSession, base: str, model: str) -> float:
    """Seconds from sending a streamed completion to its first text chunk."""
    body = {
        "model": model,
        "prompt": "The quick brown fox",
        "max_tokens": 4,
        "stream": True,
        "ignore_eos": True,  # random weights may end at once: a token must come
    }
    t0 = time.perf_counter()
    async with session.post(f"{base}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{model}: {resp.status} {await resp.text()}")
        async for line in resp.content:
            if line.startswith(b"data: ") and b'"text"' in line:
                return time.perf_counter() - t0
    raise RuntimeError(f"{model}: no token in the stream")


class Bench:
    """The engines, the credential and the measurements of one run."""

    def __init__(self, work: Path, model_dir: Path, gpu: bool, utilization: float) -> None:
        self.work = work
        self.model_dir = model_dir
        self.gpu = gpu
        self.utilization = utilization
        self.credential = os.urandom(16).hex()
        self.credential_file = work / "credential"
        self.credential_file.write_text(self.credential)
        self.engines: list[EngineProcess] = []
        self.notes: list[str] = []

    def spec(self, name: str, port: int) -> Any:
        args = ["--max-num-seqs", "8"]
        if self.gpu:
            args += ["--enable-sleep-mode", "--gpu-memory-utilization", str(self.utilization)]
        return vllm_spec(
            str(self.model_dir),
            port=port,
            served_model_name=name,
            extra_args=args,
            env={} if self.gpu else {"VLLM_CPU_KVCACHE_SPACE": "1"},
            startup_timeout_s=600,
            log_path=self.work / f"{name}.log",
            credential_file=str(self.credential_file),
        )

    async def start(self, session: aiohttp.ClientSession, name: str) -> tuple[EngineProcess, Row]:
        drop_page_cache(self.model_dir)
        engine = EngineProcess(self.spec(name, free_port()))
        self.engines.append(engine)
        t0 = time.perf_counter()
        await engine.start()
        ready_s = time.perf_counter() - t0
        ttft_s = await first_token_s(session, engine.base_url, name)
        total = time.perf_counter() - t0
        return engine, Row(f"cold ({name})", ready_s, ttft_s, total, gpu_used_bytes())

    async def control(
        self, session: aiohttp.ClientSession, engine: EngineProcess, path: str, body: Any = None
    ) -> Any:
        headers = {CREDENTIAL_HEADER: self.credential}
        async with session.post(f"{engine.base_url}{path}", json=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
            return await r.text()

    async def ready(self, session: aiohttp.ClientSession, engine: EngineProcess) -> int:
        async with session.get(f"{engine.base_url}{READY_PATH}") as r:
            return r.status

    async def wake_case(
        self, session: aiohttp.ClientSession, engine: EngineProcess, name: str, level: int
    ) -> Row:
        slept = time.perf_counter()
        await self.control(session, engine, f"/sleep?level={level}")
        sleep_s = time.perf_counter() - slept
        asleep_gpu = gpu_used_bytes()
        assert await self.ready(session, engine) == 503, "readiness must fail while asleep"
        self.notes.append(
            f"sleep level {level}: {sleep_s:.2f} s"
            + (f"; GPU memory in use asleep {asleep_gpu / 2**30:.1f} GiB" if asleep_gpu else "")
        )
        await asyncio.sleep(1.0)
        if level == 2:
            drop_page_cache(self.model_dir)
        t0 = time.perf_counter()
        if level == 1:
            await self.control(session, engine, "/wake_up")
        else:  # vLLM's way back from level 2 with the weights on disk
            await self.control(session, engine, "/wake_up?tags=weights")
            await self.control(session, engine, "/collective_rpc", {"method": "reload_weights"})
            await self.control(session, engine, "/wake_up?tags=kv_cache")
            await self.control(session, engine, "/reset_prefix_cache")
        ready_s = time.perf_counter() - t0
        ttft_s = await first_token_s(session, engine.base_url, name)
        total = time.perf_counter() - t0
        assert await self.ready(session, engine) == 200
        return Row(f"wake_level{level} ({name})", ready_s, ttft_s, total, gpu_used_bytes())

    async def run(self) -> list[Row]:
        rows: list[Row] = []
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                a, row = await self.start(session, "engine-a")
                rows.append(row)
                _, row = await self.start(session, "engine-b")  # two engines on one GPU
                rows.append(row)
                for level in (1, 2):
                    try:
                        rows.append(await self.wake_case(session, a, "engine-a", level))
                    except RuntimeError as e:
                        self.notes.append(f"wake from level {level}: failed: {e}")
            finally:
                await asyncio.gather(*(e.stop(30.0) for e in self.engines))
        return rows


def report(rows: list[Row], gpu: bool, notes: list[str], model: str) -> dict[str, Any]:
    base = rows[0].total_s
    where = "GPU" if gpu else "CPU (vLLM CPU)"
    print(f"Two vLLM engines on one {where}, model {model}; first request's time to first token:")
    print(f"  {'case':<22} {'ready':>8} {'ttft':>8} {'total':>8} {'vs cold':>8} {'GPU used':>10}")
    for r in rows:
        used = f"{r.gpu_used_bytes / 2**30:.1f} GiB" if r.gpu_used_bytes is not None else "-"
        print(
            f"  {r.case:<22} {r.ready_s:7.2f}s {r.ttft_s:7.3f}s {r.total_s:7.2f}s "
            f"{r.total_s / base:7.3f}x {used:>10}"
        )
    for n in notes:
        print(f"  note: {n}")
    goals: dict[str, bool] = {}
    if gpu:
        wake1 = [r for r in rows if r.case.startswith("wake_level1")]
        goals["level-1 wake <= 0.5 s"] = bool(wake1) and wake1[0].ready_s <= 0.5
        goals["local-disk cold start <= 3 s"] = rows[0].ready_s <= 3.0
        for goal, met in goals.items():
            print(f"  goal {goal}: {'met' if met else 'NOT met'}")
    else:
        print(f"  what a CPU cannot show: {CPU_CANNOT_SHOW}")
    return {
        "device": "gpu" if gpu else "cpu",
        "model": model,
        "rows": [asdict(r) for r in rows],
        "ratios_vs_cold": {r.case: r.total_s / base for r in rows},
        "notes": notes,
        "goals": goals,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    p.add_argument("--work-dir", type=Path, default=None, help="where the model is built (kept)")
    p.add_argument("--model-dir", type=Path, default=None, help="use this model instead")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.4,
        help="each engine's share of the GPU (two must fit awake) (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    gpu = args.device == "gpu" or (args.device == "auto" and shutil.which("nvidia-smi"))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-warm-pool-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = "8b" if gpu else "tiny"
    model_dir = args.model_dir or work / f"llama-{shape}"
    if not (model_dir / "config.json").exists():
        t0 = time.perf_counter()
        build_tiny_llama(model_dir, shape=SHAPES[shape], overwrite=True)
        print(f"built the {shape} model in {time.perf_counter() - t0:.1f} s: {model_dir}")
    bench = Bench(work, model_dir, bool(gpu), args.gpu_memory_utilization)
    rows = asyncio.run(bench.run())
    result = report(rows, bool(gpu), bench.notes, f"{shape} ({model_dir})")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
