"""Pull throughput: Thaw's puller vs boto3's own ``download_file`` (TransferManager), same object,
same SeaweedFS, same run.

Starts SeaweedFS (``weed mini``) on 127.0.0.1 with its data in a temporary directory, uploads one
object of random bytes (default 200 MiB) as a one-file model, then, alternating the order in each
round, times:

  thaw      ModelCache.ensure on an empty cache: manifest GET, parallel ranged GETs written in
            place, sha256 of every byte, fsync, rename (what a node does on a cold start)
  boto3     client.download_file (TransferManager defaults: 8 MiB parts, 10 threads), no hash,
            no fsync (the baseline the goal is stated against: ratio >= 1.0)
  boto3+v   the same, then sha256 of the file and fsync (the same guarantees as thaw)

Prints each round, the median throughput of each and the ratios thaw / boto3 and thaw / boto3+v.

  .venv/bin/python bench/cache_pull.py                   # 200 MiB, 3 rounds
  .venv/bin/python bench/cache_pull.py --size-mib 500 --rounds 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cache_servers import seaweed_server

from kernel.clock import SystemClock
from model_cache.cache import ModelCache
from model_cache.puller import PullConfig
from model_cache.push import push
from model_cache.s3 import S3Location
from model_cache.store import Store

MiB = 1024 * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=200, help="object size (default: 200)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, order alternating (default: 3)")
    ap.add_argument("--chunk-mib", type=int, default=8, help="thaw's ranged GET size (default: 8)")
    ap.add_argument("--concurrency", type=int, default=8, help="thaw's GETs in flight (default: 8)")
    args = ap.parse_args()

    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="thaw-bench-pull-") as tmp:
        work = Path(tmp)
        src = work / "src" / "bench-model"
        src.mkdir(parents=True)
        with open(src / "model.bin", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        size = args.size_mib * MiB
        with seaweed_server(work / "seaweed") as server:
            client = server.client(max_pool_connections=max(32, args.concurrency + 4))
            push(src, S3Location("models", "bench-model"), client)
            print(
                f"object: {args.size_mib} MiB in SeaweedFS {server.endpoint}; thaw: "
                f"{args.chunk_mib} MiB x {args.concurrency}; boto3: TransferManager defaults"
            )

            def thaw(i: int) -> float:
                d = work / f"cache{i}"
                store = Store.open(d)
                cfg = PullConfig(chunk_bytes=args.chunk_mib * MiB, concurrency=args.concurrency)
                with ModelCache(store, client, clock, pull=cfg) as cache:
                    t0 = clock.monotonic()
                    r = cache.ensure("bench-model", "s3://models/bench-model")
                    dt = clock.monotonic() - t0
                assert r.tier == "miss" and r.fetched_bytes == size
                store.close()
                shutil.rmtree(d)
                return dt

            def boto(i: int, verify: bool) -> float:
                out = work / f"dl{i}.bin"
                t0 = clock.monotonic()
                client.raw.download_file("models", "bench-model/model.bin", str(out))
                if verify:
                    h = hashlib.sha256()
                    with open(out, "rb") as f:
                        while block := f.read(MiB):
                            h.update(block)
                        os.fsync(f.fileno())
                    h.hexdigest()
                dt = clock.monotonic() - t0
                assert out.stat().st_size == size
                out.unlink()
                return dt

            times: dict[str, list[float]] = {"thaw": [], "boto3": [], "boto3+v": []}
            runs = {
                "thaw": lambda i: thaw(i),
                "boto3": lambda i: boto(i, False),
                "boto3+v": lambda i: boto(i, True),
            }
            for i in range(args.rounds):
                order = list(runs) if i % 2 == 0 else list(reversed(runs))
                line = []
                for name in order:
                    dt = runs[name](i)
                    times[name].append(dt)
                    line.append(f"{name} {size / dt / 1e6:7.1f} MB/s")
                print(f"round {i + 1}: " + ", ".join(line))
            client.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"median {k:8} {v:6.3f} s  {size / v / 1e6:7.1f} MB/s")
    ratio, ratio_v = med["boto3"] / med["thaw"], med["boto3+v"] / med["thaw"]
    print(f"ratio thaw / boto3 download_file          = {ratio:.2f}x (goal >= 1.0)")
    print(f"ratio thaw / boto3 download_file + verify = {ratio_v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
