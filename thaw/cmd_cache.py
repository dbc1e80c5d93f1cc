"""``thaw cache push / pull / ls / serve``: publish a model to S3, pull it to a node-local cache,
list the cache, run the node agent (:mod:`model_cache`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HELP = """\
The node-local model cache: models are published to S3 with a manifest (every file's size and
sha256, and a revision id over them), pulled to local disk with parallel ranged GETs (verified,
fsynced, renamed into place only when complete; an interrupted pull resumes), kept under a disk
budget by evicting the least recently used model that no engine has pinned.

Cache layout: DIR/models/NAME/REVISION/<files> (complete, each with thaw-manifest.json);
DIR/.partial/ holds pulls in progress. Model names: letters, digits, . _ - (org/name -> org--name).

S3: --s3-endpoint URL (default: $AWS_ENDPOINT_URL, else AWS); credentials from the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a boto3 profile; path-style addressing.

examples:
  export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  thaw cache push ./tiny-llama s3://models/tiny-llama --s3-endpoint http://127.0.0.1:8333
  thaw cache pull s3://models/tiny-llama --dir /var/cache/thaw --s3-endpoint http://127.0.0.1:8333
  thaw cache ls --dir /var/cache/thaw
  thaw cache serve --dir /var/cache/thaw --budget-bytes 200G --s3-endpoint http://127.0.0.1:8333 \\
      --s3-prefix s3://models
  curl -X POST http://127.0.0.1:8070/v1/models/tiny-llama/ensure
"""

SERVE_HELP = """\
Run the node agent (HTTP, default http://127.0.0.1:8070):

  POST /v1/models/NAME/ensure   body {"s3_uri"?, "revision"?, "pin"?, "refresh"?}: pull if missing
                                (concurrent ensures share one download); a cached revision is
                                served without asking S3 unless "refresh" or another "revision"
                                is asked for; answers path, tier hit|miss, bytes
  GET  /v1/models               cached revisions: name, revision, path, size_bytes, last_used,
                                pins, pinned, state (ready|pulling|partial), and budget/used bytes
  POST /v1/models/NAME/pin      body {"revision"?}: a pinned model is never evicted
  POST /v1/models/NAME/unpin    body {"revision"?}
  GET  /health, GET /metrics    thaw_cache_bytes, thaw_cache_hits_total, thaw_cache_misses_total,
                                thaw_cache_pull_seconds, thaw_cache_evictions_total, ...

A pull reserves the model's whole size first, evicting idle models least recently used first, so
the cache never holds more than --budget-bytes of model files; if even that cannot make room
(pinned models), the ensure fails with 507. Pins live in the agent's memory: after a restart
engines pin again. Errors answer {"error": {"message", "type", "param", "code"}}.

examples:
  thaw cache serve --dir /var/cache/thaw --budget-bytes 500GiB --s3-endpoint http://s3.local:8333
  thaw cache serve --dir /tmp/c --budget-bytes 2000000000 --s3-prefix s3://models --port 9000
  curl -X POST localhost:8070/v1/models/tiny-llama/ensure -H 'content-type: application/json' \\
       -d '{"s3_uri": "s3://models/tiny-llama"}'
  curl -X POST localhost:8070/v1/models/tiny-llama/pin
"""

_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``"200G"`` -> 200_000_000_000, ``"8MiB"`` -> 8_388_608, ``"1000"`` -> 1000."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; accepted: a byte count with an optional unit "
            "k M G T (powers of 1000) or KiB MiB GiB TiB (powers of 1024), e.g. 200G, 512MiB"
        )
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="the node-local model cache: push a model to S3, pull it, list, run the node agent",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="cache_command", metavar="VERB")
    p.set_defaults(func=lambda args: _usage(p))

    push = verbs.add_parser(
        "push",
        help="upload a model directory and its manifest to S3",
        description="Upload every file of DIR to s3://BUCKET/PREFIX/<path>, then "
        "thaw-manifest.json last (so a manifest never names a missing file). Symlinks and paths "
        "with '..', backslashes or control characters are refused. Prints the revision.\n\n"
        "example:\n  thaw cache push ./tiny-llama s3://models/tiny-llama "
        "--s3-endpoint http://127.0.0.1:8333",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("src", metavar="DIR", type=Path, help="the model directory")
    push.add_argument("dest", metavar="s3://BUCKET/PREFIX", help="where to publish it")
    push.add_argument(
        "--name", default=None, help="the model's name (default: the directory's name)"
    )
    _s3_args(push)
    push.set_defaults(func=run_push)

    pull = verbs.add_parser(
        "pull",
        help="pull a published model into a cache directory (progress bar)",
        description="Pull the model published at s3://BUCKET/PREFIX into DIR (resuming an "
        "interrupted pull of the same revision), verify every file's sha256 and print its path. "
        "Takes DIR's lock: while `thaw cache serve` runs on DIR, use its ensure instead.\n\n"
        "example:\n  thaw cache pull s3://models/tiny-llama --dir /var/cache/thaw "
        "--s3-endpoint http://127.0.0.1:8333",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("source", metavar="s3://BUCKET/PREFIX", help="where the model was pushed")
    pull.add_argument("--dir", type=Path, required=True, help="the cache directory")
    pull.add_argument(
        "--name", default=None, help="the model's name (default: the one its manifest names)"
    )
    pull.add_argument("--revision", default=None, help="refuse any other revision than this one")
    pull.add_argument(
        "--budget-bytes",
        type=parse_bytes,
        default=None,
        metavar="SIZE",
        help="evict least recently used models to stay under this size (default: no budget)",
    )
    pull.add_argument("--no-progress", action="store_true", help="no progress bar")
    _s3_args(pull)
    _pull_args(pull)
    pull.set_defaults(func=run_pull)

    ls = verbs.add_parser(
        "ls",
        help="list the models in a cache directory",
        description="List the revisions in DIR (read-only; works while an agent serves DIR): "
        "name, revision, size, last use, state (ready, or partial: an interrupted pull), path. "
        "Pins live in the agent: ask GET /v1/models for them.\n\n"
        "example:\n  thaw cache ls --dir /var/cache/thaw --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--dir", type=Path, required=True, help="the cache directory")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_ls)

    serve = verbs.add_parser(
        "serve",
        help="run the node agent (HTTP API: ensure, list, pin, metrics)",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--dir", type=Path, required=True, help="the cache directory")
    serve.add_argument(
        "--budget-bytes",
        type=parse_bytes,
        required=True,
        metavar="SIZE",
        help="most bytes of model files to keep, e.g. 500GiB, 200G, 2000000000",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8070, help="port (default: %(default)s)")
    serve.add_argument(
        "--s3-prefix",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help="where models live when an ensure names no s3_uri: model NAME is read from "
        "s3://BUCKET/PREFIX/NAME (default: none; ensures must name s3_uri)",
    )
    serve.add_argument(
        "--max-concurrent-pulls",
        type=int,
        default=4,
        metavar="N",
        help="pulls of different models at once (default: %(default)s)",
    )
    _s3_args(serve)
    _pull_args(serve)
    serve.set_defaults(func=run_serve)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _s3_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3")
    g.add_argument(
        "--s3-endpoint",
        default=None,
        metavar="URL",
        help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: $AWS_ENDPOINT_URL, else AWS)",
    )
    g.add_argument(
        "--s3-region",
        default="us-east-1",
        metavar="REGION",
        help="region to sign with (default: %(default)s)",
    )


def _pull_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pulling")
    g.add_argument(
        "--chunk-bytes",
        type=parse_bytes,
        default=8 * 2**20,
        metavar="SIZE",
        help="bytes per ranged GET (default: 8MiB)",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="ranged GETs in flight (default: %(default)s)",
    )
    g.add_argument(
        "--sync-every-bytes",
        type=parse_bytes,
        default=64 * 2**20,
        metavar="SIZE",
        help="fsync and journal completed ranges this often; a crash loses at most this much "
        "(default: 64MiB)",
    )
    g.add_argument(
        "--max-bytes-per-s",
        type=parse_bytes,
        default=None,
        metavar="SIZE",
        help="cap the pull bandwidth (all pulls together), e.g. 500MB (default: no cap)",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        metavar="N",
        help="fetches of a file whose sha256 mismatches before giving up (default: %(default)s)",
    )


def _fail(verb: str, e: Exception) -> int:
    print(f"thaw cache {verb}: {e}", file=sys.stderr)
    from model_cache.errors import InvalidInputError

    return 2 if isinstance(e, InvalidInputError) else 1


def _s3_settings(args: argparse.Namespace, connections: int) -> Any:
    from model_cache.s3 import S3Settings

    return S3Settings(
        endpoint_url=args.s3_endpoint,
        region=args.s3_region,
        max_pool_connections=max(connections, 10),
    )


def _pull_config(args: argparse.Namespace) -> Any:
    from model_cache.puller import PullConfig

    return PullConfig(
        chunk_bytes=args.chunk_bytes,
        concurrency=args.concurrency,
        sync_every_bytes=args.sync_every_bytes,
        max_attempts=args.max_attempts,
        max_bytes_per_s=args.max_bytes_per_s,
    )


def run_push(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model_cache.errors import CacheError
    from model_cache.push import push, scan_dir
    from model_cache.s3 import S3Client, parse_s3_uri

    try:
        dest = parse_s3_uri(args.dest, "s3://BUCKET/PREFIX")
        manifest = scan_dir(args.src, args.name)
        s3 = S3Client(_s3_settings(args, 10))
        with tqdm(total=manifest.total_bytes, unit="B", unit_scale=True, desc="push") as bar:
            manifest = push(args.src, dest, s3, args.name, progress=bar.update)
    except CacheError as e:
        return _fail("push", e)
    print(
        f"pushed {manifest.model} revision {manifest.revision} "
        f"({len(manifest.files)} files, {manifest.total_bytes} bytes) to {dest.uri}"
    )
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from tqdm import tqdm

    from kernel.clock import SystemClock
    from model_cache.cache import ModelCache
    from model_cache.errors import CacheError
    from model_cache.manifest import MANIFEST_NAME, parse_manifest
    from model_cache.s3 import S3Client, parse_s3_uri
    from model_cache.store import Store

    try:
        source = parse_s3_uri(args.source, "s3://BUCKET/PREFIX")
        config = _pull_config(args)
        s3 = S3Client(_s3_settings(args, args.concurrency + 2))
        manifest = parse_manifest(
            s3.get_bytes(source, MANIFEST_NAME), f"{source.uri}/{MANIFEST_NAME}"
        )
        name = args.name or manifest.model
        store = Store.open(args.dir)
    except ValidationError as e:
        return _fail("pull", e)
    except CacheError as e:
        return _fail("pull", e)
    try:
        with (
            ModelCache(store, s3, SystemClock(), budget_bytes=args.budget_bytes, pull=config) as c,
            tqdm(
                unit="B",
                unit_scale=True,
                desc=name,
                disable=args.no_progress,
                total=manifest.total_bytes,
            ) as bar,
        ):
            fut = c.ensure_future(name, source.uri, args.revision, progress=bar.update)
            result = fut.result()
    except CacheError as e:
        return _fail("pull", e)
    finally:
        store.close()
    how = (
        "already cached"
        if result.tier == "hit"
        else f"pulled {result.fetched_bytes} bytes ({result.resumed_bytes} resumed) "
        f"in {result.pull_s:.1f} s"
    )
    print(f"{result.name} {result.revision}: {how}\n{result.path}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    import datetime

    from model_cache.errors import CacheError
    from model_cache.store import Store

    try:
        store = Store.open(args.dir, writer=False)
        revisions = store.scan()
    except CacheError as e:
        return _fail("ls", e)
    rows = sorted(revisions, key=lambda r: (r.name, -r.last_used_s))
    if args.json:
        for r in rows:
            print(
                json.dumps(
                    {
                        "name": r.name,
                        "revision": r.revision,
                        "size_bytes": r.size_bytes,
                        "last_used": r.last_used_s,
                        "state": "ready" if r.complete else "partial",
                        "path": str(r.path),
                    }
                )
            )
        return 0
    print(f"{'NAME':24} {'REVISION':12} {'SIZE_BYTES':>14} {'LAST_USED':19} {'STATE':7} PATH")
    for r in rows:
        when = datetime.datetime.fromtimestamp(r.last_used_s).strftime("%Y-%m-%d %H:%M:%S")
        state = "ready" if r.complete else "partial"
        print(f"{r.name:24} {r.revision[:12]:12} {r.size_bytes:>14} {when:19} {state:7} {r.path}")
    total = sum(r.size_bytes for r in rows)
    print(f"{len(rows)} revision(s), {total} bytes")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kernel.clock import SystemClock
    from model_cache.agent import AgentSettings, serve
    from model_cache.errors import CacheError

    try:
        settings = AgentSettings(
            dir=args.dir,
            budget_bytes=args.budget_bytes,
            host=args.host,
            port=args.port,
            s3=_s3_settings(args, args.concurrency * 2 + 4),
            s3_prefix=args.s3_prefix,
            pull=_pull_config(args),
            max_concurrent_pulls=args.max_concurrent_pulls,
        )
        return serve(settings, SystemClock())
    except (ValidationError, CacheError) as e:
        return _fail("serve", e)
