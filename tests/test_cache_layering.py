"""The model cache's pure cores (manifest, eviction policy, result types) import no I/O, directly
or through the project's own modules; and ``thaw cache``'s parser stays light (no boto3, FastAPI
at import)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from procs import REPO

PURE = ("model_cache.manifest", "model_cache.eviction", "model_cache.types")
FORBIDDEN = {
    "boto3",
    "botocore",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "aiohttp",
    "prometheus_client",
    "subprocess",
    "socket",
    "os",
    "shutil",
    "threading",
    "time",
    "model_cache.store",
    "model_cache.puller",
    "model_cache.s3",
    "model_cache.cache",
    "model_cache.agent",
}
OWN = ("model_cache", "thaw")


def imports_of(module: str) -> set[str]:
    path = REPO / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        for imp in imports_of(m):
            if imp in seen:
                continue
            seen.add(imp)
            if (
                imp.split(".")[0] in OWN
                and (REPO / Path(*imp.split("."))).with_suffix(".py").exists()
            ):
                todo.append(imp)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_cores_import_no_io(module: str) -> None:
    bad = {m for m in closure(module) if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_cli_help_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys; import thaw.cmd_cache as c;"
        "c.register(argparse.ArgumentParser().add_subparsers());"
        "heavy = [m for m in ('boto3', 'fastapi', 'uvicorn', 'model_cache.agent') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
