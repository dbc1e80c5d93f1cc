"""The model manifest (pure): which files make up one revision of a model, their sizes and sha256.

Owns the manifest's schema (``thaw-manifest.json``), the revision id (sha256 over the sorted file
list with each file's size and hash, so two directories with the same bytes get the same revision)
and the rules that keep a model inside the cache directory: model names and manifest paths are
validated here, before anything touches a disk. No I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_cache.errors import ManifestError

#: The manifest's object name next to the model's files in S3, and its file name in the cache.
MANIFEST_NAME = "thaw-manifest.json"
MANIFEST_FORMAT: Literal["thaw-manifest/v1"] = "thaw-manifest/v1"

MODEL_NAME_RULE = (
    "1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit "
    "(write an org/name id as org--name)"
)
PATH_RULE = (
    "a relative '/'-separated path of at most 1024 bytes: no leading '/', no backslashes, "
    "no empty, '.' or '..' parts, no control characters, each part at most 255 bytes"
)
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def model_name_problem(name: object) -> str | None:
    """Why ``name`` is not an accepted model name, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not _MODEL_NAME_RE.fullmatch(name):
        return f"must be {MODEL_NAME_RULE}"
    return None


def validate_model_name(name: object, field: str = "name") -> str:
    """``name`` if it is an accepted model name; else :class:`ManifestError` naming the field."""
    problem = model_name_problem(name)
    if problem is not None:
        raise ManifestError(f"{field} = {name!r}: {problem}", param=field)
    assert isinstance(name, str)
    return name


def path_problem(path: object) -> str | None:
    """Why ``path`` is not an accepted manifest path, or None if it is."""
    if not isinstance(path, str):
        return f"must be a string, got {type(path).__name__}"
    if path == "":
        return "must not be empty"
    if len(path.encode("utf-8", "surrogatepass")) > 1024:
        return "is longer than 1024 bytes"
    if "\\" in path:
        return "must not contain backslashes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "must not contain control characters"
    if path.startswith("/"):
        return "must be relative (no leading '/')"
    parts = path.split("/")
    if any(p == "" for p in parts):
        return "must not have empty parts ('//' or a trailing '/')"
    if any(p in (".", "..") for p in parts):
        return "must not have '.' or '..' parts"
    if any(len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
        return "has a part longer than 255 bytes"
    if path == MANIFEST_NAME:
        return f"must not be {MANIFEST_NAME!r} (reserved for the manifest)"
    return None


def validate_path(path: object, field: str = "path") -> str:
    """``path`` if it is an accepted manifest path; else :class:`ManifestError` naming the field."""
    problem = path_problem(path)
    if problem is not None:
        raise ManifestError(f"{field} = {path!r}: {problem}; accepted: {PATH_RULE}", param=field)
    assert isinstance(path, str)
    return path


def validate_revision(revision: object, field: str = "revision") -> str:
    """``revision`` if it is 64 lowercase hex digits; else :class:`ManifestError`."""
    if not isinstance(revision, str) or not _SHA256_RE.fullmatch(revision):
        raise ManifestError(
            f"{field} = {revision!r}: must be 64 lowercase hex digits (a manifest's revision)",
            param=field,
        )
    return revision


class FileEntry(BaseModel):
    """One file of a model revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description=f"the file's path inside the model directory: {PATH_RULE}")
    size_bytes: int = Field(ge=0, description="the file's size in bytes")
    sha256: str = Field(description="the file's sha256, 64 lowercase hex digits")

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        problem = path_problem(v)
        if problem is not None:
            raise ValueError(f"{problem}; accepted: {PATH_RULE}")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha_ok(cls, v: str) -> str:
        if not _SHA256_RE.fullmatch(v):
            raise ValueError("must be 64 lowercase hex digits")
        return v


def compute_revision(files: Iterable[FileEntry]) -> str:
    """The revision id: sha256 over the files sorted by path, one ``path NUL size NUL sha256 LF``
    line each."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.size_bytes}\0{f.sha256}\n".encode())
    return h.hexdigest()


class Manifest(BaseModel):
    """A model revision: its name, revision id and files (``thaw-manifest.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["thaw-manifest/v1"] = Field(
        default=MANIFEST_FORMAT, description="the manifest format version"
    )
    model: str = Field(description=f"the model's name: {MODEL_NAME_RULE}")
    revision: str = Field(
        description="sha256 over the sorted file list with sizes and hashes (compute_revision)"
    )
    files: tuple[FileEntry, ...] = Field(description="every file of the model, sorted by path")

    @field_validator("model")
    @classmethod
    def _model_ok(cls, v: str) -> str:
        problem = model_name_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        seen: set[str] = set()
        for p in paths:
            if p in seen:
                raise ValueError(f"files: path {p!r} is listed twice; accepted: each path once")
            seen.add(p)
        for p in paths:
            parts = p.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in seen:
                    raise ValueError(
                        f"files: {parent!r} is a file and also the directory of {p!r}; "
                        "accepted: a path is a file or a directory, not both"
                    )
        expected = compute_revision(self.files)
        if self.revision != expected:
            raise ValueError(
                f"revision = {self.revision!r} does not match the files listed "
                f"(their revision is {expected!r})"
            )
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def build_manifest(model: str, files: Sequence[FileEntry]) -> Manifest:
    """A manifest for ``files`` (sorted by path) with its revision computed."""
    ordered = tuple(sorted(files, key=lambda f: f.path))
    return _validated(
        {
            "model": model,
            "revision": compute_revision(ordered),
            "files": [f.model_dump() for f in ordered],
        }
    )


def parse_manifest(data: bytes | str, source: str = "manifest") -> Manifest:
    """Parse and validate manifest JSON; :class:`ManifestError` names field, value and rule."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: not valid JSON ({e})") from e
    return _validated(raw, source)


def _validated(raw: Any, source: str = "manifest") -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        param = _loc_str(errors[0]["loc"]) if errors else None
        raise ManifestError(f"{source}: {format_validation_error(e, raw)}", param=param) from e


def format_validation_error(e: ValidationError, raw: Any) -> str:
    """pydantic's errors as ``field.path = value: message`` lines (value quoted from the input)."""
    lines = []
    for err in e.errors(include_url=False):
        loc = _loc_str(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            fields = FileEntry.model_fields if "files" in err["loc"] else Manifest.model_fields
            msg = f"unknown field; accepted fields: {', '.join(fields)}"
        if loc:
            lines.append(f"{loc} = {_lookup(raw, err['loc'])!r}: {msg}")
        else:
            lines.append(msg)
    return "; ".join(lines)


def _loc_str(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lookup(raw: Any, loc: Sequence[int | str]) -> Any:
    cur = raw
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return cur
