"""S3 servers the model-cache tests and bench start on 127.0.0.1, as real processes that never
outlive their ``with`` block: moto's server (fast, for unit tests) and SeaweedFS ``weed mini``
(a real object store on disk, checking S3 signatures against a configured identity)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from procs import child, free_port, wait_http_ok

from model_cache.s3 import S3Client, S3Settings

BIN = Path(sys.executable).parent
BUCKET = "models"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    bucket: str

    def settings(self, **overrides: object) -> S3Settings:
        base: dict[str, object] = {
            "endpoint_url": self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }
        return S3Settings.model_validate({**base, **overrides})

    def client(self, **overrides: object) -> S3Client:
        return S3Client(self.settings(**overrides))

    @property
    def env(self) -> dict[str, str]:
        """Environment for a child process (the CLI reads credentials from it)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


@contextmanager
def moto_server(log_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    with child(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        log_path=log_dir / "moto.log",
    ) as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/moto-api/", 30, proc)
        server = S3Server(f"http://127.0.0.1:{port}", "testing", "testing", BUCKET)
        client = server.client()
        client.raw.create_bucket(Bucket=BUCKET)
        client.close()
        yield server


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together while choosing, so none repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


@contextmanager
def seaweed_server(work: Path, extra_args: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """``weed mini`` with its data in ``work``; S3 accepts only the one identity configured."""
    work.mkdir(parents=True, exist_ok=True)
    access, secret = "thaw-test-key", "thaw-test-secret-" + os.urandom(8).hex()
    config = work / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "thaw",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (master, master_g, vol, vol_g, filer, filer_g, s3, s3_g, admin, admin_g) = _free_ports(10)
    argv = [
        str(BIN / "weed"),
        "mini",
        f"-dir={work / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={vol}",
        f"-volume.port.grpc={vol_g}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_g}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        f"-filer.localSocket={work / 'filer.sock'}",
        f"-s3.localSocket={work / 's3.sock'}",
        *extra_args,
    ]
    (work / "data").mkdir(exist_ok=True)
    with child(argv, log_path=work / "weed.log") as proc:
        server = S3Server(f"http://127.0.0.1:{s3}", access, secret, BUCKET)
        client = server.client(max_attempts=1, connect_timeout_s=1.0, read_timeout_s=5.0)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}; see {work}/weed.log")
            try:
                client.raw.head_bucket(Bucket=BUCKET)
                break
            except Exception as e:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 not ready in 60 s: {e}") from e
                time.sleep(0.2)
        client.close()
        yield server
