"""``thaw emulator`` options: defaults, file, flags, precedence and the error messages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from procs import thaw_argv

from engine.emulator.config import EmulatorConfig, EmulatorConfigError, load_config
from engine.perf_model import EnginePerf
from thaw.cmd_emulator import OPTIONS


def test_defaults_are_the_engine_models() -> None:
    config = load_config()
    assert config.perf() == EnginePerf()
    assert config.served_model_name == ("thaw-emulator",)


def test_file_then_flags_last_wins(tmp_path: Path) -> None:
    f = tmp_path / "engine.yaml"
    f.write_text("decode_base_s: 0.03\nmax-num-seqs: 4\nserved_model_name: tiny\n")
    config = load_config(f, {"max_num_seqs": 2, "decode_base_s": None})
    assert config.decode_base_s == 0.03  # a flag left unset does not override the file
    assert config.max_num_seqs == 2
    assert config.served_model_name == ("tiny",)
    assert config.perf().max_num_seqs == 2


def test_json_file(tmp_path: Path) -> None:
    f = tmp_path / "engine.json"
    f.write_text(json.dumps({"prefill_tokens_per_s": 1234.5, "served_model_name": ["a", "b"]}))
    config = load_config(f)
    assert config.prefill_tokens_per_s == 1234.5
    assert config.served_model_name == ("a", "b")


def test_unknown_key_names_key_value_and_accepted(tmp_path: Path) -> None:
    f = tmp_path / "engine.yaml"
    f.write_text("seed: 1\ndecode-base-ms: 20\n")
    with pytest.raises(EmulatorConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: 1 error\n")
    assert "decode_base_ms (line 2): value 20: unknown key; accepted keys: load_time_s," in msg
    assert "decode_base_s" in msg.split("accepted keys:")[1]


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "engine.yaml"
    f.write_text("max-num-seqs: 2\nmax_num_seqs: 3\n")
    with pytest.raises(EmulatorConfigError) as e:
        load_config(f)
    assert e.value.errors == (
        "max_num_seqs (line 2): duplicate key; first given on line 1, and YAML would silently "
        "keep only the last",
    )


@pytest.mark.parametrize(
    ("file_text", "overrides", "expected"),
    [
        # the one format (kernel.config_errors): where (a flag, or a key and its line), the
        # value, what is accepted
        ("", {"max_num_seqs": 0}, "--max-num-seqs: value 0: must be > 0"),
        ("max_num_seqs: -3\n", {}, "max_num_seqs (line 1): value -3: must be > 0"),
        (
            "seed: 1\nport: 70000\n",
            {},
            "port (line 2): value 70000: must be <= 65535 (accepted: [0, 65535])",
        ),
        (
            "decode_base_s: fast\n",
            {},
            "decode_base_s (line 1): value 'fast': must be a valid number, unable to parse "
            "string as a number of seconds",
        ),
        (
            "served_model_name: []\n",
            {},
            "served_model_name (line 1): value []: must have at least 1 item",
        ),
        (
            "served_model_name: ' '\n",
            {},
            "served_model_name (line 1): value ' ': names must not be blank",
        ),
        (
            "max_model_len_tokens: 9000\nkv_capacity_tokens: 8000\n",
            {},
            "max_model_len_tokens = 9000, must be <= kv_capacity_tokens (8000)",
        ),
        ("- a list\n", {}, "<top>: value ['a list']: must be a mapping with keys load_time_s,"),
    ],
)
def test_bad_values_name_field_and_value(
    tmp_path: Path, file_text: str, overrides: dict[str, object], expected: str
) -> None:
    f = tmp_path / "engine.yaml"
    f.write_text(file_text)
    with pytest.raises(EmulatorConfigError) as e:
        load_config(f, overrides)
    assert expected in str(e.value)


def test_every_option_has_a_flag_that_states_its_default() -> None:
    flagged = {name for name, _, _ in OPTIONS} | {"served_model_name"}
    assert flagged == set(EmulatorConfig.model_fields)
    defaults = EmulatorConfig()
    for name, _, text in OPTIONS:
        value = getattr(defaults, name)
        assert f"(default: {'none' if value is None else value}" in text, name


def test_help_teaches_and_bad_config_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        thaw_argv("emulator", "--help"), capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag in ("--max-num-seqs", "--max-model-len", "--config", "--served-model-name"):
        assert flag in out
    assert "examples:" in out
    f = tmp_path / "bad.yaml"
    f.write_text("max_num_seqs: zero\n")
    run = subprocess.run(
        thaw_argv("emulator", "--config", str(f)), capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert "max_num_seqs (line 1): value 'zero': must be a valid integer" in run.stderr
