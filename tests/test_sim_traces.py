"""Trace parsing and generators: bad rows name file, line, field and value; seeds reproduce."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.traces import (
    Request,
    TraceError,
    bursty,
    detect_format,
    diurnal,
    load_trace,
    parse_azure_csv,
    parse_mooncake_jsonl,
    poisson,
    spread_zipf,
)

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:16:46.6805900,10,1
"""


def test_azure_parses_seconds_from_first_row() -> None:
    reqs = parse_azure_csv(AZURE, "t.csv")
    assert [r.prompt_tokens for r in reqs] == [374, 396, 10]
    assert [r.output_tokens for r in reqs] == [44, 109, 1]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(4.314579, abs=1e-5)
    assert reqs[2].arrival_s == pytest.approx(60.0, abs=1e-5)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("2023-11-16 18:15:47.1,abc,3", "t.csv:3: ContextTokens = 'abc'"),
        ("2023-11-16 18:15:47.1,3,-2", "t.csv:3: GeneratedTokens = '-2'"),
        ("yesterday,3,2", "t.csv:3: TIMESTAMP = 'yesterday'"),
        ("2023-11-16 18:15:47.1,3", "t.csv:3: row"),
    ],
)
def test_azure_bad_row_names_line_field_value(row: str, needle: str) -> None:
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1,1\n" + row + "\n"
    with pytest.raises(TraceError) as e:
        parse_azure_csv(text, "t.csv")
    assert needle in str(e.value)


def test_azure_bad_header() -> None:
    with pytest.raises(TraceError, match=r"t.csv:1: header"):
        parse_azure_csv("time,in,out\n", "t.csv")


def test_mooncake_parses_and_reports_bad_rows(tmp_path: Path) -> None:
    good = '{"timestamp": 1000, "input_length": 5, "output_length": 2, "hash_ids": [1]}\n'
    good += '{"timestamp": 3500, "input_length": 7, "output_length": 3}\n'
    path = tmp_path / "m.jsonl"
    path.write_text(good)
    reqs = load_trace(path, "mooncake")
    assert reqs == (Request(0.0, 5, 2, "model"), Request(2.5, 7, 3, "model"))
    bad = good + '{"timestamp": 4000, "input_length": "x", "output_length": 3}\n'
    with pytest.raises(TraceError, match=r"m.jsonl:3: input_length = 'x'"):
        parse_mooncake_jsonl(bad, "m.jsonl")
    with pytest.raises(TraceError, match=r"m.jsonl:2: output_length: required"):
        parse_mooncake_jsonl(
            good.splitlines()[0] + '\n{"timestamp": 1, "input_length": 1}\n', "m.jsonl"
        )
    with pytest.raises(TraceError, match=r"m.jsonl:1: not JSON"):
        parse_mooncake_jsonl("{nope\n", "m.jsonl")


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "absent.csv")


def test_generators_are_seeded_and_sorted() -> None:
    gens: tuple[Callable[[int], tuple[Request, ...]], ...] = (
        lambda s: poisson(2.0, 100.0, s),
        lambda s: bursty(5.0, 10.0, 50.0, 300.0, s),
        lambda s: diurnal(1.0, 100.0, 0.8, 300.0, s),
    )
    for gen in gens:
        a, b, c = gen(1), gen(1), gen(2)
        assert a == b
        assert a != c
        assert all(x.arrival_s <= y.arrival_s for x, y in itertools.pairwise(a))
        assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in a)


def test_bursty_is_silent_when_off() -> None:
    reqs = bursty(5.0, 10.0, 50.0, 300.0, 3)
    assert reqs and all(r.arrival_s % 60.0 < 10.0 for r in reqs)


def test_spread_zipf_is_popularity_ordered_and_seeded() -> None:
    reqs = poisson(50.0, 100.0, 0)
    spread = spread_zipf(reqs, 10, 1.2, seed=7)
    assert spread == spread_zipf(reqs, 10, 1.2, seed=7)
    counts: dict[str, int] = {}
    for r in spread:
        counts[r.model] = counts.get(r.model, 0) + 1
    assert counts["model-00"] > 3 * counts.get("model-09", 0)
    assert [r.arrival_s for r in spread] == [r.arrival_s for r in reqs]


MOONCAKE = '{"timestamp": 0, "input_length": 12000, "output_length": 20}\n' * 2


@pytest.mark.parametrize(
    ("name", "text", "fmt", "how"),
    [
        ("m.jsonl", MOONCAKE, "mooncake", "JSON object"),
        ("m.csv", MOONCAKE, "mooncake", "JSON object"),  # the content wins
        ("a.txt", AZURE, "azure", "header"),
        ("a.jsonl", AZURE, "azure", "header"),
        ("e.jsonl", "\n", "mooncake", "extension .jsonl"),
        ("e.CSV", "\n", "azure", "extension .csv"),
    ],
)
def test_the_format_is_detected_from_content_then_extension(
    tmp_path: Path, name: str, text: str, fmt: str, how: str
) -> None:
    assert detect_format(name, text)[0] == fmt
    assert how in detect_format(name, text)[1]
    if text.strip():
        (tmp_path / name).write_text(text)
        assert len(load_trace(tmp_path / name)) == len(text.strip().splitlines()) - (fmt == "azure")


def test_an_undetectable_trace_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="--trace-format azure or --trace-format mooncake"):
        detect_format("t.dat", "time;in;out\n")


def test_a_wrong_format_gives_a_short_message_naming_the_override(tmp_path: Path) -> None:
    long_line = '{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [' + ", ".join(
        str(i) for i in range(200)
    )
    path = tmp_path / "m.jsonl"
    path.write_text(long_line + "]}\n")
    with pytest.raises(TraceError) as e:
        load_trace(path, "azure")  # forced: the header check fails on a JSON line
    text = str(e.value)
    assert len(text) < 400
    assert "--trace-format mooncake" in text
    assert "as given by --trace-format" in text
    assert len(load_trace(path)) == 1  # detected, it reads
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": "many", "output_length": 2}\n')
    with pytest.raises(TraceError, match=r"detected from its first line.*--trace-format azure"):
        load_trace(bad)
