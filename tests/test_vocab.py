"""The shared vocabulary (``kernel/vocab.py``): how the coarse and fine load tiers relate, and that
no room spells a replica-state list, a tier list or a metric name of its own."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel import vocab
from kernel.vocab import (
    FINE_LOAD_TIERS,
    LOAD_TIERS,
    REPLICA_STATES,
    START_TIERS,
    coarse_tier,
    wake_tier,
)

REPO = Path(__file__).resolve().parent.parent
#: The product's rooms (pyproject's import-linter root packages).
ROOMS = (
    "thaw",
    "kernel",
    "autoscaler",
    "engine",
    "activator",
    "model_cache",
    "events",
    "policy_file",
    "local_stack",
    "knative",
    "sim",
)


def test_every_fine_tier_is_one_coarse_tier_in_the_same_order() -> None:
    coarse = [coarse_tier(t) for t in FINE_LOAD_TIERS]
    assert set(coarse) == set(LOAD_TIERS)  # every coarse tier is reached
    ranks = [LOAD_TIERS.index(c) for c in coarse]
    assert ranks == sorted(ranks)  # fastest first in both
    assert [t for t in FINE_LOAD_TIERS if coarse_tier(t) == "wake"] == [wake_tier(1), wake_tier(2)]
    for t in START_TIERS:  # a new engine's tiers read the same in both vocabularies
        assert t in LOAD_TIERS and t in FINE_LOAD_TIERS and coarse_tier(t) == t


@pytest.mark.parametrize("level", [0, 3, None])
def test_a_wake_needs_a_vllm_sleep_level(level: object) -> None:
    with pytest.raises(ValueError, match=f"level = {level!r}: must be a vLLM sleep level, 1 or 2"):
        wake_tier(level)  # type: ignore[arg-type]


def test_sleep_state_labels_are_vllms() -> None:
    # vllm/v1/metrics/loggers.py: engine_sleep_state{sleep_state="awake"|"weights_offloaded"|...}
    assert vocab.VLLM_SLEEP_STATE_VALUES == {
        0: "awake",
        1: "weights_offloaded",
        2: "discard_all",
    }
    assert vocab.total(vocab.VLLM_REQUEST_SUCCESS) == "vllm:request_success_total"


# -- one home: no copies elsewhere --------------------------------------------------------------


def _metric_names() -> set[str]:
    prefixes = ("VLLM_", "THAW_ACTIVATOR_BUFFERED", "KNATIVE_REVISION_REQUEST")
    out = set()
    for name in dir(vocab):
        value = getattr(vocab, name)
        if name.startswith(prefixes) and isinstance(value, str) and not name.endswith("_LABEL"):
            out |= {value, vocab.total(value)}
    return out


def _lists() -> dict[str, frozenset[str]]:
    return {
        "replica states": frozenset(REPLICA_STATES),
        "load tiers": frozenset(LOAD_TIERS),
        "fine load tiers": frozenset(FINE_LOAD_TIERS),
    }


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def copies(root: Path) -> Iterator[str]:
    """Every metric name written as a literal, and every literal list of all replica states or
    all tiers, in the rooms under ``root`` outside ``kernel/vocab.py``."""
    names = _metric_names()
    lists = _lists()
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            if path == root / "kernel" / "vocab.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docs = _docstrings(tree)
            where = path.relative_to(root)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and id(node) not in docs:
                    if isinstance(node.value, str) and node.value in names:
                        yield f"{where}:{node.lineno}: metric name {node.value!r}"
                # tuples, lists and sets, and so Literal["starting", "ready", ...] too
                if isinstance(node, ast.Tuple | ast.List | ast.Set):
                    words = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                    for what, members in lists.items():
                        if members <= words:
                            yield f"{where}:{node.lineno}: a list of all {what}"


def test_replica_states_tiers_and_metric_names_live_only_in_the_vocabulary() -> None:
    assert list(copies(REPO)) == []


def test_the_copy_check_finds_copies(tmp_path: Path) -> None:
    for room in ROOMS:
        (tmp_path / room).mkdir()
    (tmp_path / "sim" / "x.py").write_text(
        '"""Docstrings may say vllm:num_requests_waiting."""\n'
        'State = Literal["starting", "ready", "sleeping", "draining"]\n'
        'TIERS = ("wake_level1", "wake_level2", "local_disk", "remote")\n'
        'WAITING = "vllm:num_requests_waiting"\n'
        'RANK = {t: i for i, t in enumerate(["wake", "local_disk", "remote"])}\n'
        'LIVE = ("starting", "ready")\n'
    )
    assert sorted(copies(tmp_path)) == [
        "sim/x.py:2: a list of all replica states",
        "sim/x.py:3: a list of all fine load tiers",
        "sim/x.py:4: metric name 'vllm:num_requests_waiting'",
        "sim/x.py:5: a list of all load tiers",
    ]
