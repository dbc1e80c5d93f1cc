"""``thaw cache``'s parser stays light (no boto3, FastAPI at import). That the cache's pure cores
import no I/O is an import-linter contract (pyproject.toml, `lint-imports` in CI)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_help_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys; import thaw.cmd_cache as c;"
        "c.register(argparse.ArgumentParser().add_subparsers());"
        "heavy = [m for m in ('boto3', 'fastapi', 'uvicorn', 'model_cache.agent') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
