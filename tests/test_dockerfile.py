"""The Dockerfile builds the image the manifests run: every package copied, a numeric non-root
user (the manifests set runAsNonRoot), ``thaw`` as the entry point the manifests' command names.

No Docker engine here: the file is checked as text against pyproject.toml and manifests/.
"""

from __future__ import annotations

import tomllib

import yaml
from procs import REPO


def _instructions() -> list[tuple[str, str]]:
    out = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_package_is_copied() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {rest.split()[0] for word, rest in _instructions() if word == "COPY"}
    assert {p.rstrip("*") for p in packages} <= copied, f"COPY misses {set(packages) - copied}"
    assert {p for p in copied if (REPO / p).is_dir()} <= set(packages) | {"."}


def test_user_is_numeric_where_manifests_demand_non_root() -> None:
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0
    non_root = []
    for path in (REPO / "manifests").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = ((doc or {}).get("spec") or {}).get("template", {}).get("spec") or {}
            for c in spec.get("containers", []):
                if (c.get("securityContext") or {}).get("runAsNonRoot"):
                    non_root.append((path.name, c["image"], c.get("command")))
    assert non_root, "no manifest container asks for runAsNonRoot; update this test"
    for name, image, command in non_root:
        assert image.startswith("ghcr.io/thaw-dev/thaw:"), (name, image)
        assert command == ["thaw"], (name, command)
    assert ("ENTRYPOINT", '["thaw"]') in _instructions()
