"""Publishing a model directory to S3 (``thaw cache push DIR s3://BUCKET/PREFIX``).

Owns the walk of the source directory (regular files only: a symlink is refused, as is a path the
manifest rules reject), hashing, and the upload order: every file first, ``thaw-manifest.json``
last, so a manifest in S3 never names a file that is not there yet.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from model_cache.errors import InvalidInputError, UnsafePathError
from model_cache.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    path_problem,
    validate_model_name,
)
from model_cache.s3 import S3Client, S3Location

HASH_BLOCK_BYTES = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            h.update(block)
    return h.hexdigest()


def scan_dir(src: Path, name: str | None = None) -> Manifest:
    """The manifest of directory ``src`` (model name: ``name``, default the directory's name).

    A ``thaw-manifest.json`` at the top of ``src`` (a directory copied out of a cache) is skipped.
    """
    if not src.is_dir():
        raise InvalidInputError(f"DIR = '{src}': not a directory", param="DIR")
    model = validate_model_name(name if name is not None else src.resolve().name, field="name")
    files: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        for n in sorted([*dirnames, *filenames]):
            full = Path(dirpath) / n
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(
                    f"'{full}' is a symlink; push refuses symlinks (copy the file in instead)",
                    param="DIR",
                )
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"'{full}' is not a regular file", param="DIR")
            rel = full.relative_to(src).as_posix()
            if rel == MANIFEST_NAME:
                continue
            problem = path_problem(rel)
            if problem is not None:
                raise UnsafePathError(f"file '{rel}' in '{src}': its path {problem}", param="DIR")
            files.append(FileEntry(path=rel, size_bytes=st.st_size, sha256=sha256_file(full)))
    if not files:
        raise InvalidInputError(f"DIR = '{src}': no files to publish", param="DIR")
    return build_manifest(model, files)


def push(
    src: Path,
    dest: S3Location,
    s3: S3Client,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Upload ``src`` to ``dest``: files (multipart for large ones), then the manifest last."""
    manifest = scan_dir(src, name)
    for f in manifest.files:
        s3.upload_file(src.joinpath(*f.path.split("/")), dest, f.path, progress)
    s3.put_bytes(dest, MANIFEST_NAME, manifest.to_json())
    return manifest
