"""The model cache's error family: one root (:class:`CacheError`) and one class per way a request
can fail, each with the HTTP status and OpenAI-style ``type``/``code`` the agent answers with.

Third-party errors (botocore, OS errors) are wrapped with ``raise ... from e``.
"""

from __future__ import annotations

from kernel.errors import ThawError


class CacheError(ThawError):
    """Base of every model-cache error. ``param`` names the offending request field, if any."""

    status = 500
    type = "server_error"
    code = "cache_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInputError(CacheError):
    """A model name, manifest, path or request field is not accepted (nothing was written)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ManifestError(InvalidInputError):
    """A manifest does not parse or does not validate; the message names field, value, rule."""

    code = "invalid_manifest"


class UnsafePathError(InvalidInputError):
    """A path would leave the cache directory or pass through a symlink."""

    code = "unsafe_path"


class NotCachedError(CacheError):
    """The model (or revision) is not on this node and no S3 location to pull it from is known."""

    status = 404
    type = "not_found_error"
    code = "model_not_found"


class PinError(CacheError):
    """Unpin of a model that is not pinned."""

    status = 409
    type = "invalid_request_error"
    code = "not_pinned"


class SourceMismatchError(CacheError):
    """The S3 manifest names another model, or another revision than the one asked for."""

    status = 409
    type = "invalid_request_error"
    code = "source_mismatch"


class BudgetError(CacheError):
    """The model cannot fit under the disk budget without evicting pinned or in-flight models."""

    status = 507
    type = "server_error"
    code = "insufficient_storage"


class ChecksumError(CacheError):
    """A downloaded file's sha256 or size differs from the manifest (after the allowed retries)."""

    status = 502
    type = "upstream_error"
    code = "checksum_mismatch"

    def __init__(self, message: str, param: str | None = None, fetched_bytes: int = 0) -> None:
        super().__init__(message, param)
        self.fetched_bytes = fetched_bytes


class S3Error(CacheError):
    """An S3 request failed (wrapping botocore's error); names bucket and key. ``s3_code`` is
    S3's error code (``NoSuchKey``, ``AccessDenied``, ...) or "" for a transport failure."""

    status = 502
    type = "upstream_error"
    code = "s3_error"

    def __init__(self, message: str, s3_code: str = "") -> None:
        super().__init__(message)
        self.s3_code = s3_code

    @property
    def not_found(self) -> bool:
        return self.s3_code in ("NoSuchKey", "NoSuchBucket", "404")


class CacheBusyError(CacheError):
    """Another process holds the cache directory's lock."""

    status = 409
    type = "server_error"
    code = "cache_busy"
