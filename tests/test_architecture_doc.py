"""docs/architecture.md names real places: every repository path it quotes exists, and its picture
lists the rooms of the layers contract in the contract's order."""

from __future__ import annotations

import re
import tomllib

from procs import REPO

DOC = REPO / "docs" / "architecture.md"


def test_every_quoted_path_exists() -> None:
    text = DOC.read_text()
    quoted = set(re.findall(r"`([a-z_]+/[A-Za-z0-9_./-]*)`", text))
    assert quoted, "the doc quotes no path; update this test"
    missing = sorted(p for p in quoted if not (REPO / p).exists())
    assert missing == []


def test_the_picture_lists_the_layers_in_order() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    picture = DOC.read_text().split("```")[1]
    rows = [line for line in picture.splitlines() if re.match(r"\s*│ [a-z_]+ ", line)]
    firsts = [re.findall(r"│ ([a-z_]+)", row)[0] for row in rows]
    expected = [layer.split("|")[0].strip() for layer in layers]
    seen = [f for f in dict.fromkeys(firsts) if f in expected]
    assert seen == expected
