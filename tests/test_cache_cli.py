"""``thaw cache``'s command line: sizes, help that teaches, and refusals that say why (no S3
server needed: each of these fails before the first request)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from procs import thaw_argv

from thaw.cmd_cache import parse_bytes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1000", 1000),
        ("200G", 200 * 10**9),
        ("200GB", 200 * 10**9),
        ("1.5k", 1500),
        ("8MiB", 8 * 2**20),
        ("8mi", 8 * 2**20),
        ("2TiB", 2 * 2**40),
        ("0", 0),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-5", "5 PB", "1e9", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="accepted: a byte count"):
        parse_bytes(text)


def thaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(thaw_argv(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("verb", ["push", "pull", "ls", "serve"])
def test_help_teaches_with_an_example(verb: str) -> None:
    out = thaw("cache", verb, "--help")
    assert out.returncode == 0
    assert "example" in out.stdout and f"thaw cache {verb}" in out.stdout


def test_cache_without_a_verb_prints_help() -> None:
    out = thaw("cache")
    assert out.returncode == 2 and "push" in out.stdout and "serve" in out.stdout


def test_bad_budget_is_refused_with_the_value() -> None:
    out = thaw("cache", "serve", "--dir", "/tmp/x", "--budget-bytes", "lots")
    assert out.returncode == 2
    assert "'lots' is not a size" in out.stderr


def test_push_refuses_symlinks_before_contacting_s3(tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    (src / "real.bin").write_bytes(b"x")
    (src / "link.bin").symlink_to(tmp_path / "elsewhere")
    out = thaw("cache", "push", str(src), "s3://models/m", "--s3-endpoint", "http://127.0.0.1:9")
    assert out.returncode == 2
    assert "link.bin' is a symlink; push refuses symlinks" in out.stderr


def test_push_refuses_a_bad_name_and_a_bad_uri(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a").write_bytes(b"x")
    out = thaw("cache", "push", str(tmp_path / "m"), "s3://models/m", "--name", "../up")
    assert out.returncode == 2 and "name = '../up'" in out.stderr
    out = thaw("cache", "push", str(tmp_path / "m"), "https://models/m")
    assert out.returncode == 2 and "must look like s3://BUCKET" in out.stderr


def test_ls_of_a_missing_dir(tmp_path: Path) -> None:
    out = thaw("cache", "ls", "--dir", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such directory" in out.stderr
