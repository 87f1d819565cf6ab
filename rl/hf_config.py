"""An ``hf:`` model directory checked before any work: its config, its code, and the memory it would take.

``rl.train --model hf:PATH`` builds a model from a directory (or a ``config.json``) it did not
write, so the directory is read as data and checked before ``--out`` is created or anything is
built:

* ``read_hf_config``: ``config.json`` is a JSON object with a ``model_type`` transformers knows
  (a tokenizer file given as the config is named as one), and every size the model is built
  from is a positive int (``vocab_size`` "16", ``hidden_size`` -32, ``num_attention_heads`` 0
  are errors), with the heads dividing the width. Each error names ``--model`` and the file.
* ``refuse_remote_code``: a config or tokenizer config that names its own classes in
  ``auto_map`` is refused. transformers would ask on stdin whether to import the directory's
  ``.py`` files and run them; the lab never does (every load passes ``trust_remote_code=False``),
  and refusing the directory up front says why instead of failing half-way.
* ``model_identity``: digests of the model's config, weights and tokenizer, stored in the
  checkpoint and compared on ``--resume`` by name, so an edited config (``rms_norm_eps``), other
  weights or another layer count is refused, not trained on under the old run's name.
* ``check_memory``: parameters, gradients and AdamW's two moments, plus the activations of one
  learner pass, estimated from the config (``estimate_training_bytes``, a lower bound: what
  surely is kept, so a run that fits is never refused), against the memory available on the
  run's device; a config that cannot fit (``hidden_size`` 40000, ``num_hidden_layers`` 10**6)
  is refused with the estimate, not built until the OOM killer acts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import digest_files, digest_json
from .gguf_check import read_gguf_header

# Files that may name custom classes (auto_map) for transformers' Auto* loaders.
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# Keys a tokenizer file has and a model config does not: a tokenizer given as the config is named as one.
_TOKENIZER_KEYS = ("added_tokens", "tokenizer_class", "model_max_length", "normalizer", "pre_tokenizer",
                   "chat_template")
# Sizes a config may give under either naming (Llama-style, GPT-2-style); those after the first 4 may be null.
SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "head_dim", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_inner",
             "n_positions", "n_ctx")
_REQUIRED_IF_GIVEN = SIZE_KEYS[:4]
# fp32 master weights, their gradients, AdamW's exp_avg and exp_avg_sq (the compute-precision copy left out).
TRAINING_BYTES_PER_PARAMETER = 4 + 4 + 8


@dataclass(frozen=True)
class ModelShape:
    """The sizes a decoder-only causal LM is built from, as transformers reads them from the config."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool
    tied_embeddings: bool
    learned_positions: int = 0  # rows of a learned position embedding (gpt2); 0 with rotary positions

    def parameters(self) -> int:
        """Parameter count, norms included (biases left out: a few per mille at most)."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        embeddings = (self.vocab_size * (1 if self.tied_embeddings else 2) + self.learned_positions) * h
        return embeddings + self.num_hidden_layers * (attention + mlp + 2 * h) + h


def _fail(spec: str, config_file: Path, what: str) -> ValueError:
    return ValueError(f"--model {spec}: {config_file}: {what}")


def read_hf_config(config_file: str | os.PathLike, spec: str):
    """``config_file`` as a ``transformers.PretrainedConfig``, checked (module doc); ``ValueError`` naming
    ``--model spec`` and the file otherwise. Returns ``(config, ModelShape)``."""
    config_file = Path(config_file)
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(spec, config_file, f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not text.strip():
        raise _fail(spec, config_file, "the file is empty, expected a model config (JSON)")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(spec, config_file, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(raw, dict):
        raise _fail(spec, config_file, f"a JSON {type(raw).__name__}, expected an object (a model config)")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        hint = (" (it looks like a tokenizer file: give the model's config.json)"
                if any(k in raw for k in _TOKENIZER_KEYS) or "model" in raw and "vocab" in str(raw.get("model"))[:200]
                else "")
        raise _fail(spec, config_file, f"no \"model_type\", which names the architecture{hint}")
    import transformers as tf

    if model_type not in tf.CONFIG_MAPPING:
        raise _fail(spec, config_file, f"model_type {model_type!r} is not an architecture this transformers "
                                       f"{tf.__version__} knows")
    for key in SIZE_KEYS:
        value = raw.get(key)
        if key in raw and not (value is None and key not in _REQUIRED_IF_GIVEN) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            # Checked before transformers sees it: its own code divides by some of these.
            raise _fail(spec, config_file, f"{key} must be a positive int, got {value!r}")
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        config = tf.AutoConfig.for_model(model_type, **fields)
    except Exception as e:  # transformers' own validation: its message says which field
        first = str(e).strip().splitlines()
        raise _fail(spec, config_file, f"transformers refuses it: {' '.join(line.strip() for line in first[:2])}"
                    ) from None
    return config, _shape(config, spec, config_file)


def check_hf_directory(spec, flag_value: str) -> ModelShape:
    """An ``hf:`` ``--model`` (``rl.hf.ModelSpec``) before any work: its code refused, its config read and checked."""
    refuse_remote_code(spec.path, flag_value)
    return read_hf_config(spec.config_file, flag_value)[1]


def _positive(config, name: str, spec: str, config_file: Path, default=None) -> int:
    value = getattr(config, name, None)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(spec, config_file, f"{name} must be a positive int, got {value!r}")
    return value


def _shape(config, spec: str, config_file: Path) -> ModelShape:
    vocab = _positive(config, "vocab_size", spec, config_file)
    hidden = _positive(config, "hidden_size", spec, config_file)
    layers = _positive(config, "num_hidden_layers", spec, config_file)
    heads = _positive(config, "num_attention_heads", spec, config_file)
    kv_heads = _positive(config, "num_key_value_heads", spec, config_file, default=heads)
    if heads % kv_heads:
        raise _fail(spec, config_file, f"num_attention_heads {heads} must be a multiple of num_key_value_heads "
                                       f"{kv_heads}")
    if getattr(config, "head_dim", None) is None and hidden % heads:
        raise _fail(spec, config_file, f"hidden_size {hidden} must be a multiple of num_attention_heads {heads}")
    head_dim = _positive(config, "head_dim", spec, config_file, default=hidden // heads)
    gpt2_style = hasattr(config, "n_inner")
    name = "n_inner" if gpt2_style else "intermediate_size"
    inner = _positive(config, name, spec, config_file, default=4 * hidden)
    positions = _positive(config, "max_position_embeddings", spec, config_file)
    return ModelShape(vocab, hidden, layers, heads, kv_heads, head_dim, inner, gated_mlp=not gpt2_style,
                      tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                      learned_positions=positions if gpt2_style else 0)


def refuse_remote_code(directory: str | os.PathLike, spec: str) -> None:
    """``ValueError`` naming ``--model`` and the file when a config in ``directory`` maps a class to its own code."""
    directory = Path(directory)
    for name in CODE_CONFIGS:
        path = directory / name
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # the config check names a damaged config.json; a damaged tokenizer config fails its loader
        auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
        if auto_map:
            classes = sorted({str(c) for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])
                              for c in (v if isinstance(v, list) else [v]) if c})
            raise ValueError(f"--model {spec}: {path} names custom code in auto_map ({', '.join(classes)}): the lab "
                             f"never runs a model directory's own code (trust_remote_code=False); use a model "
                             f"whose architecture ships with transformers")


def estimate_training_bytes(shape: ModelShape, sequences: int, length: int) -> tuple[int, int, int]:
    """``(total, parameter-state bytes, activation bytes)`` of one RL step on ``sequences`` sequences of ``length``.

    Parameters: ``TRAINING_BYTES_PER_PARAMETER`` each. Activations, 4 bytes each, kept for the
    backward: per token and layer the residual stream, norm outputs and q/k/v/o (8 widths), two
    of the MLP's intermediate widths and eager attention's probabilities (heads x length); plus the
    sampler's KV cache. A lower bound: the figures a pass cannot do without.
    """
    params = shape.parameters() * TRAINING_BYTES_PER_PARAMETER
    per_token_layer = 8 * shape.hidden_size + 2 * shape.intermediate_size + shape.num_attention_heads * length
    kv_cache = 2 * shape.num_key_value_heads * shape.head_dim
    activations = 4 * sequences * length * shape.num_hidden_layers * (per_token_layer + kv_cache)
    return params + activations, params, activations


def available_bytes(device: torch.device) -> int:
    """Memory a run could still take on ``device``: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(shape: ModelShape, sequences: int, length: int, device: torch.device, spec: str,
                 config_file: Path, available: int | None = None) -> int:
    """Refuse (``ValueError`` with the estimate) a model whose training step would not fit the device's memory."""
    total, params, activations = estimate_training_bytes(shape, sequences, length)
    free = available_bytes(device) if available is None else available
    if total > free:
        raise _fail(spec, config_file, f"training it needs at least {_gib(total)} ({shape.parameters():,} "
                                       f"parameters x {TRAINING_BYTES_PER_PARAMETER} bytes = {_gib(params)} for "
                                       f"weights, gradients and AdamW state, plus {_gib(activations)} of activations "
                                       f"for "
                                       f"{sequences} sequences of {length} tokens), more than the {_gib(free)} "
                                       f"available on {device.type}")
    return total


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.index.json")
TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                      "chat_template.jinja")


def _files(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in directory.glob(pattern) if p.is_file()})


def model_identity(spec, gguf: Path | None = None) -> dict[str, str | None]:
    """Digests naming what a ``--model`` builds: ``config``, ``weights`` (None: drawn from the seed) and, for an
    ``hf:`` directory, ``tokenizer``. TinyGPT has none: its flags are its shape, compared as flags.

    ``spec``: an ``rl.hf.ModelSpec``; ``gguf``: the SmolLM2 file a ``smollm2`` spec loads.
    """
    if spec.kind == "tinygpt":
        return {}
    if spec.kind == "smollm2":
        header = read_gguf_header(gguf)
        scalars = {k: v for k, v in header.metadata.items() if not isinstance(v, list)}
        return {"config": digest_json({"gguf": scalars, "layers": spec.layers}), "weights": digest_files([gguf])}
    raw = json.loads(Path(spec.config_file).read_text(encoding="utf-8"))
    weights = None if spec.random_init else digest_files(_files(Path(spec.path), WEIGHT_PATTERNS))
    return {"config": digest_json(raw), "weights": weights,
            "tokenizer": digest_files(_files(Path(spec.path), TOKENIZER_PATTERNS))}
