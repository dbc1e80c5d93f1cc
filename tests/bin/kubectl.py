"""``kubectl apply -f -`` / ``kubectl apply -k DIR`` for the example tests, with no cluster:
each object is checked as the API server would check it before storing (built-in kinds against
Kubernetes 1.30's schemas with kubernetes-validate, strict; every object has apiVersion, kind and
metadata.name), and reported as kubectl reports it. Anything else is refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

BUILTIN_GROUPS = {"", "apps", "rbac.authorization.k8s.io", "batch", "policy", "networking.k8s.io"}


def kustomize(root: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = root / entry
        out += kustomize(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    return [o for o in out if o]


def main(argv: list[str]) -> int:
    if argv[:2] == ["apply", "-f"] and argv[2:] == ["-"]:
        objects = [o for o in yaml.safe_load_all(sys.stdin.read()) if o]
    elif argv[:2] == ["apply", "-k"] and len(argv) == 3:
        objects = kustomize(Path(argv[2]))
    else:
        print(f"kubectl (test stand-in): only `apply -f -` and `apply -k DIR`, not {argv}")
        return 2
    if not objects:
        print("error: no objects passed to apply", file=sys.stderr)
        return 1
    for obj in objects:
        api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        name = (obj.get("metadata") or {}).get("name")
        if not (api and kind and name):
            print(f"error: an object without apiVersion, kind or name: {obj}", file=sys.stderr)
            return 1
        group = api.split("/")[0] if "/" in api else ""
        if group in BUILTIN_GROUPS:
            try:
                kubernetes_validate.validate(obj, "1.30", strict=True)
            except kubernetes_validate.ValidationError as e:
                print(f"error: {kind}/{name}: {e}", file=sys.stderr)
                return 1
        print(f"{kind.lower()}.{group or 'core'}/{name} created")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
