"""The manifest's pure rules: model names, paths, revision ids, and error messages that name the
field, the value and what is accepted."""

from __future__ import annotations

import hashlib
import json

import pytest

from model_cache.errors import InvalidInputError, ManifestError
from model_cache.manifest import (
    MANIFEST_NAME,
    FileEntry,
    build_manifest,
    compute_revision,
    parse_manifest,
    path_problem,
    validate_model_name,
    validate_path,
)
from model_cache.s3 import S3Location, parse_s3_uri


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path: str, data: bytes = b"x") -> FileEntry:
    return FileEntry(path=path, size_bytes=len(data), sha256=sha(data))


@pytest.mark.parametrize(
    "name", ["tiny-llama", "Qwen2.5-0.5B", "meta-llama--Llama-3-8B", "a", "x_1.v2", "9b"]
)
def test_model_names_accepted(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "-x",
        "_x",
        "org/name",
        "../x",
        "a b",
        "a\\b",
        "a\0b",
        "é",
        "x" * 129,
    ],
)
def test_model_names_refused_with_field_value_and_rule(name: str) -> None:
    with pytest.raises(ManifestError) as e:
        validate_model_name(name)
    assert e.value.param == "name"
    assert str(e.value).startswith(f"name = {name!r}: ")
    assert "letters" in str(e.value) or "A-Z" in str(e.value)


@pytest.mark.parametrize(
    "path",
    ["config.json", "a/b/c.safetensors", "tokenizer/vocab.txt", "..a", "a..b/c", ".gitattributes"],
)
def test_paths_accepted(path: str) -> None:
    assert path_problem(path) is None
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("..", "'..'"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "relative"),
        ("a\\..\\b", "backslash"),
        ("C:\\x", "backslash"),
        ("a//b", "empty parts"),
        ("a/", "empty parts"),
        ("a\nb", "control"),
        ("a\0b", "control"),
        ("x" * 256, "255"),
        ("a/" * 600 + "b", "1024"),
        (MANIFEST_NAME, "reserved"),
    ],
)
def test_paths_refused(path: str, why: str) -> None:
    problem = path_problem(path)
    assert problem is not None and why in problem
    with pytest.raises(ManifestError) as e:
        validate_path(path, field="files[3].path")
    assert e.value.param == "files[3].path"
    assert str(e.value).startswith(f"files[3].path = {path!r}: ")
    assert "accepted: a relative '/'-separated path" in str(e.value)


def test_revision_is_order_independent_and_content_sensitive() -> None:
    a, b = entry("a.bin", b"1"), entry("b/c.bin", b"22")
    assert compute_revision([a, b]) == compute_revision([b, a])
    assert compute_revision([a, b]) != compute_revision([a, entry("b/c.bin", b"23")])
    assert compute_revision([a]) != compute_revision([entry("A.bin", b"1")])
    m = build_manifest("tiny", [b, a])
    assert [f.path for f in m.files] == ["a.bin", "b/c.bin"]
    assert m.total_bytes == 3
    assert len(m.revision) == 64


def test_manifest_round_trips() -> None:
    m = build_manifest("tiny", [entry("config.json", b"{}"), entry("w/model.bin", b"abc")])
    assert parse_manifest(m.to_json()) == m
    assert json.loads(m.to_json())["format"] == "thaw-manifest/v1"


def _raw(files: list[dict[str, object]], **extra: object) -> dict[str, object]:
    revision = hashlib.sha256(
        "".join(
            f"{f['path']}\0{f['size_bytes']}\0{f['sha256']}\n"
            for f in sorted(files, key=lambda f: str(f["path"]))
        ).encode()
    ).hexdigest()
    return {"model": "tiny", "revision": revision, "files": files, **extra}


def test_traversal_in_a_manifest_names_the_file_index() -> None:
    files = [
        {"path": "ok.bin", "size_bytes": 1, "sha256": sha(b"x")},
        {"path": "../../escape.bin", "size_bytes": 1, "sha256": sha(b"x")},
    ]
    with pytest.raises(ManifestError) as e:
        parse_manifest(json.dumps(_raw(files)), source="s3://models/tiny/thaw-manifest.json")
    assert e.value.param == "files[1].path"
    assert "files[1].path = '../../escape.bin': must not have '.' or '..' parts" in str(e.value)
    assert str(e.value).startswith("s3://models/tiny/thaw-manifest.json: ")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (_raw([], extra=1), "extra = 1: unknown field; accepted fields: format, model, revision"),
        (
            _raw([{"path": "a", "size_bytes": 1, "sha256": sha(b"x"), "mode": 7}]),
            "files[0].mode = 7: unknown field; accepted fields: path, size_bytes, sha256",
        ),
        (
            _raw([{"path": "a", "size_bytes": -1, "sha256": sha(b"x")}]),
            "files[0].size_bytes = -1",
        ),
        (
            _raw([{"path": "a", "size_bytes": 1, "sha256": "XYZ"}]),
            "files[0].sha256 = 'XYZ': must be 64 lowercase hex digits",
        ),
        (
            {"model": "tiny", "revision": "0" * 64, "files": []},
            f"revision = '{'0' * 64}' does not match the files listed",
        ),
        (
            _raw(
                [
                    {"path": "a", "size_bytes": 1, "sha256": sha(b"x")},
                    {"path": "a", "size_bytes": 1, "sha256": sha(b"x")},
                ]
            ),
            "'a' is listed twice",
        ),
        (
            _raw(
                [
                    {"path": "a", "size_bytes": 1, "sha256": sha(b"x")},
                    {"path": "a/b", "size_bytes": 1, "sha256": sha(b"x")},
                ]
            ),
            "'a' is a file and also the directory of 'a/b'",
        ),
        ({**_raw([]), "model": "../up"}, "model = '../up': must be 1 to 128 characters"),
    ],
)
def test_bad_manifests_are_refused_with_precise_messages(
    raw: dict[str, object], expect: str
) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(json.dumps(raw))
    assert expect in str(e.value)


def test_not_json() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{nope")


@pytest.mark.parametrize(
    ("uri", "loc"),
    [
        ("s3://models", S3Location("models", "")),
        ("s3://models/", S3Location("models", "")),
        ("s3://models/tiny-llama", S3Location("models", "tiny-llama")),
        ("s3://models/org/tiny/", S3Location("models", "org/tiny")),
    ],
)
def test_s3_uris(uri: str, loc: S3Location) -> None:
    assert parse_s3_uri(uri) == loc
    assert loc.key("a/b") == (f"{loc.prefix}/a/b" if loc.prefix else "a/b")


@pytest.mark.parametrize("uri", ["http://x/y", "models/tiny", "s3://", "s3://A_B", "s3://m/a//b"])
def test_bad_s3_uris(uri: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_s3_uri(uri)
    assert e.value.param == "s3_uri"
    assert repr(uri) in str(e.value)
