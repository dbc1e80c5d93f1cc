"""The tiny Llama builder and ``thaw model build-tiny``: determinism, the files vLLM needs, the
tokenizer, the chat template, and the CLI's refusal to overwrite."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from procs import REPO, thaw_argv

from model_cache.tiny_model import (
    BOS,
    EOT,
    LLAMA_3_8B,
    SHAPES,
    SPECIAL_TOKENS,
    TinyLlamaShape,
    TinyModelError,
    build_tiny_llama,
    ensure_tiny_llama,
    num_parameters,
    tiny_llama_config,
)

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def digests(directory: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(directory.iterdir())
        if f.is_file()
    }


def read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and data of a safetensors file, read by hand (numpy has no bfloat16)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    return header, raw[8 + header_len :]


def bf16_tensor(header: dict[str, Any], data: bytes, name: str) -> Any:
    entry = header[name]
    begin, end = entry["data_offsets"]
    bits = np.frombuffer(data[begin:end], dtype=np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(entry["shape"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


def test_same_seed_gives_byte_identical_files_across_processes(
    model_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "again"
    subprocess.run(thaw_argv("model", "build-tiny", str(other)), cwd=REPO, check=True)
    assert set(digests(model_dir)) == FILES
    assert digests(other) == digests(model_dir)


def test_another_seed_changes_the_weights_only(model_dir: Path, tmp_path: Path) -> None:
    other = digests(build_tiny_llama(tmp_path / "seed1", seed=1))
    same = digests(model_dir)
    assert other["model.safetensors"] != same["model.safetensors"]
    assert {k: v for k, v in other.items() if k != "model.safetensors"} == {
        k: v for k, v in same.items() if k != "model.safetensors"
    }


def test_config_is_the_tiny_llama(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "vocab_size": 2048,
        "max_position_embeddings": 2048,
        "torch_dtype": "bfloat16",
    }
    assert {k: config[k] for k in expected} == expected


def test_weights_are_bfloat16_with_llama_names_and_shapes(model_dir: Path) -> None:
    header, data = read_safetensors(model_dir / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}
    assert shapes["model.embed_tokens.weight"] == (2048, 128)
    assert shapes["lm_head.weight"] == (2048, 128)
    assert shapes["model.layers.1.self_attn.q_proj.weight"] == (128, 128)
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (64, 128)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (128, 256)
    assert len(shapes) == 3 + 2 * 9
    embed = bf16_tensor(header, data, "model.embed_tokens.weight")
    assert 0.015 < float(embed.std()) < 0.025 and abs(float(embed.mean())) < 0.001
    assert np.all(bf16_tensor(header, data, "model.norm.weight") == 1.0)
    size_bytes = (model_dir / "model.safetensors").stat().st_size
    assert 1_500_000 < size_bytes < 1_800_000  # 820k parameters at 2 bytes


def test_tokenizer_round_trips_text(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == 2048
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for text in [
        "Hello, world! Thaw scales vLLM to zero.",
        "  leading spaces, tabs\tand\nnewlines  ",
        "ünïcödé, 日本語, emoji 🙂 and 12345",
        '{"model": "tiny-llama", "max_tokens": 16}',
    ]:
        ids = tok.encode(text).ids
        assert ids[0] == tok.token_to_id(BOS)
        assert all(0 <= i < 2048 for i in ids)
        assert tok.decode(ids, skip_special_tokens=True) == text
    # Trained merges make common words single tokens, not bytes.
    assert len(tok.encode(" the autoscaler").ids) <= 4


def test_chat_template_renders_with_transformers(model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    assert len(tok) == 2048
    assert (tok.bos_token, tok.eos_token) == (BOS, EOT)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == 0 and ids.count(4) == 2  # one BOS, two <|eot_id|>
    assert tok.decode(tok("hello there").input_ids, skip_special_tokens=True) == "hello there"


def test_non_empty_dir_is_refused_unless_overwrite(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(TinyModelError, match=str(target)):
        build_tiny_llama(target)
    assert (target / "keep.txt").read_text() == "mine"
    build_tiny_llama(target, overwrite=True)
    assert digests(target) == digests(model_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no staging left behind


def test_existing_empty_dir_is_used(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert digests(build_tiny_llama(target)) == digests(model_dir)


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    with pytest.raises(TinyModelError, match="vocab_size = 100000"):
        build_tiny_llama(target, shape=TinyLlamaShape(vocab_size=100_000))
    assert list(tmp_path.iterdir()) == []


def test_two_builds_into_one_dir_at_once_both_succeed(model_dir: Path, tmp_path: Path) -> None:
    """Two replicas of `thaw up` used to build into the same staging folder (named by the
    process id) at once: one of them failed with a SafetensorError."""
    import concurrent.futures

    target = tmp_path / "tiny-llama"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = [pool.submit(build_tiny_llama, target, overwrite=True) for _ in range(2)]
        for f in done:
            f.result()
    assert digests(target) == digests(model_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama"]  # no staging left


def test_ensure_builds_once_for_concurrent_callers(model_dir: Path, tmp_path: Path) -> None:
    import concurrent.futures

    target = tmp_path / "models" / "tiny-llama"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        built = list(pool.map(lambda _: ensure_tiny_llama(target), range(3)))
    assert sorted(built) == [False, False, True]  # one build; the others waited and found it
    assert digests(target) == digests(model_dir)
    assert ensure_tiny_llama(target) is False


def test_ensure_is_single_flight_across_processes(model_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny-llama"
    code = (
        "import sys; from pathlib import Path; from model_cache.tiny_model import "
        "ensure_tiny_llama; print(ensure_tiny_llama(Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [*thaw_argv()[:1], "-c", code, str(target)], cwd=REPO, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = sorted(p.communicate(timeout=120)[0].decode().strip() for p in procs)
    assert outs == ["False", "True"] and all(p.returncode == 0 for p in procs)
    assert digests(target) == digests(model_dir)


def test_cli_refuses_a_non_empty_dir_naming_it(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "x").write_text("x")
    out = subprocess.run(
        thaw_argv("model", "build-tiny", str(target)), cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert str(target) in out.stderr and "--force" in out.stderr
    forced = subprocess.run(
        thaw_argv("model", "build-tiny", str(target), "--force", "--seed", "2"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert forced.returncode == 0, forced.stderr
    assert set(digests(target)) == FILES
    assert "thaw engine --model" in forced.stdout


def test_cli_help_teaches() -> None:
    out = subprocess.run(
        thaw_argv("model", "build-tiny", "--help"), cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0
    for words in ("--seed", "--force", "byte-identical", "example"):
        assert words in out.stdout


# -- other shapes: Llama 3 8B's, and the streaming, tiled writer it needs ----------------------


def test_the_8b_shape_is_llama_3_8b() -> None:
    config = tiny_llama_config(LLAMA_3_8B)
    expected = {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    assert {k: config[k] for k in expected} == expected
    assert num_parameters(LLAMA_3_8B) == 8_030_261_248  # Meta-Llama-3-8B's count
    assert SHAPES["8b"] is LLAMA_3_8B and SHAPES["tiny"] == TinyLlamaShape()


#: A small shape that takes the 8b shape's paths: a vocabulary padded past the corpus, and the
#: tiled streaming writer (its threshold lowered).
PADDED = TinyLlamaShape(vocab_size=4096, pad_vocab=True)


def test_a_padded_tiled_build_is_a_valid_deterministic_model(tmp_path: Path) -> None:
    written: list[int] = []
    out = build_tiny_llama(
        tmp_path / "a", seed=3, shape=PADDED, tile_above_parameters=0, progress=written.append
    )
    again = build_tiny_llama(tmp_path / "b", seed=3, shape=PADDED, tile_above_parameters=0)
    assert digests(out) == digests(again)
    header, data = read_safetensors(out / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert len(data) == 2 * num_parameters(PADDED) == sum(written)
    ends = sorted(tuple(e["data_offsets"]) for e in header.values())
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(ends))
    assert np.all(bf16_tensor(header, data, "model.layers.1.input_layernorm.weight") == 1.0)
    embed = bf16_tensor(header, data, "model.embed_tokens.weight")
    assert embed.shape == (4096, 128)
    assert 0.015 < float(embed.std()) < 0.025
    q = bf16_tensor(header, data, "model.layers.0.self_attn.q_proj.weight")
    assert not np.array_equal(q.ravel()[:1000], embed.ravel()[:1000])  # offsets differ by name
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:  # the library reads it
        assert set(f.keys()) == set(header)
        lm = f.get_tensor("lm_head.weight")
        assert lm.dtype == torch.bfloat16 and tuple(lm.shape) == (4096, 128)
        assert np.array_equal(lm.float().numpy(), bf16_tensor(header, data, "lm_head.weight"))

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 4096
    assert tok.decode([4095]) == "<|reserved_4095|>"
    ids = tok.encode("Hello, world! <|reserved_4095|>").ids
    assert max(ids) < 2063  # text never encodes to a reserved token
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 4096


def test_cli_help_names_the_8b_shape() -> None:
    out = subprocess.run(
        thaw_argv("model", "build-tiny", "--help"), cwd=REPO, capture_output=True, text=True
    )
    assert "--shape" in out.stdout and "8b" in out.stdout and "16 GB" in out.stdout
