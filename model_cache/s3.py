"""A thin S3 adapter over boto3: where a model lives (``s3://bucket/prefix``), how to reach the
endpoint (URL, credentials, path-style addressing), and the few calls the cache makes.

Owns the boto3 client and the translation of botocore errors into :class:`S3Error` (naming bucket
and key). Credentials come from the arguments or, when those are None, from boto3's own chain
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the environment, a profile, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from model_cache.errors import InvalidInputError, S3Error

#: What a failed S3 call may raise; each is wrapped into :class:`S3Error`.
_S3_FAILURES = (BotoCoreError, ClientError, OSError)

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,62}")
S3_URI_RULE = "s3://BUCKET[/PREFIX], BUCKET 2 to 63 characters from a-z 0-9 . _ -"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing '/'; may be empty)."""

    bucket: str
    prefix: str = ""

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key(name))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_uri(uri: str, field: str = "s3_uri") -> S3Location:
    """``s3://bucket/prefix`` as an :class:`S3Location`; :class:`InvalidInputError` otherwise."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidInputError(f"{field} = {uri!r}: must look like {S3_URI_RULE}", param=field)
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidInputError(
            f"{field} = {uri!r}: bucket {bucket!r} is not accepted; must look like {S3_URI_RULE}",
            param=field,
        )
    prefix = prefix.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise InvalidInputError(
            f"{field} = {uri!r}: the prefix must not have empty, '.' or '..' parts", param=field
        )
    return S3Location(bucket, prefix)


class S3Settings(BaseModel):
    """How to reach S3."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint, e.g. http://127.0.0.1:8333 (None: AWS)"
    )
    region: str = Field(default="us-east-1", description="region used to sign requests")
    access_key_id: str | None = Field(
        default=None, description="access key id (None: boto3's chain, e.g. AWS_ACCESS_KEY_ID)"
    )
    secret_access_key: str | None = Field(
        default=None,
        description="secret access key (None: boto3's chain, e.g. AWS_SECRET_ACCESS_KEY)",
        repr=False,
    )
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path", description="bucket in the URL path (path) or in the host name (virtual)"
    )
    max_pool_connections: int = Field(
        default=32, ge=1, le=1024, description="HTTP connections kept open to the endpoint"
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connect timeout")
    read_timeout_s: float = Field(default=60.0, gt=0, description="socket read timeout")
    max_attempts: int = Field(
        default=4, ge=1, le=20, description="attempts per request (botocore's standard retries)"
    )


class S3Client:
    """The calls the cache makes, over one thread-safe boto3 client."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        session = boto3.session.Session()
        self.raw: Any = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=Config(
                s3={"addressing_style": settings.addressing_style},
                signature_version="s3v4",
                max_pool_connections=settings.max_pool_connections,
                connect_timeout=settings.connect_timeout_s,
                read_timeout=settings.read_timeout_s,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            ),
        )

    def get_bytes(self, loc: S3Location, path: str) -> bytes:
        key = loc.key(path)
        try:
            resp = self.raw.get_object(Bucket=loc.bucket, Key=key)
            data: bytes = resp["Body"].read()
        except _S3_FAILURES as e:
            raise _wrap(e, "GET", loc.bucket, key) from e
        return data

    def get_range(self, loc: S3Location, path: str, start: int, end: int) -> tuple[bytes, int]:
        """Bytes ``[start, end)`` of the object and the object's total size (Content-Range)."""
        key = loc.key(path)
        try:
            resp = self.raw.get_object(Bucket=loc.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            data: bytes = resp["Body"].read()
        except _S3_FAILURES as e:
            raise _wrap(e, f"GET bytes={start}-{end - 1}", loc.bucket, key) from e
        content_range = str(resp.get("ContentRange") or "")
        total = int(content_range.rpartition("/")[2]) if "/" in content_range else len(data)
        return data, total

    def put_bytes(self, loc: S3Location, path: str, data: bytes) -> None:
        key = loc.key(path)
        try:
            self.raw.put_object(Bucket=loc.bucket, Key=key, Body=data)
        except _S3_FAILURES as e:
            raise _wrap(e, "PUT", loc.bucket, key) from e

    def upload_file(
        self,
        local: Path,
        loc: S3Location,
        path: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload with boto3's TransferManager (multipart above 8 MiB)."""
        key = loc.key(path)
        try:
            self.raw.upload_file(str(local), loc.bucket, key, Callback=progress)
        except _S3_FAILURES as e:
            raise _wrap(e, "upload", loc.bucket, key) from e

    def close(self) -> None:
        self.raw.close()


def _wrap(e: Exception, op: str, bucket: str, key: str) -> S3Error:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        return S3Error(
            f"S3 {op} s3://{bucket}/{key} failed: {code}: {err.get('Message')}", s3_code=code
        )
    return S3Error(f"S3 {op} s3://{bucket}/{key} failed: {type(e).__name__}: {e}")
