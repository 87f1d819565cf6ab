"""TinyGPT: a decoder-only transformer built only on precision_kernels (DESIGN.md section 6).

Precision policy: master weights are fp32 parameters; every forward rounds them to the
compute precision with ``pk.round_to`` (one launch for all of them), activations are
kept in the compute precision, and every dot product and reduction runs in our kernels
with fp32 accumulation; attention is one fused ``pk.attention`` launch (bottom-right causal).
With ``linear_precision="fp8"`` the block linears run W8A8 (``pk.fp8_linear``: e4m3 weights
quantised per output row from the fp32 masters once per ``compute_weights``, e4m3 activations
per token, a straight-through gradient); norms, attention, the KV cache and the LM head stay in
the compute precision, as FP8 rollout engines keep them.
The only PyTorch glue is exact and elementwise on equal dtypes (embedding lookup, residual
adds, ReLU and its square) plus reshapes and cache writes.

Two entry points share all layer code:

* ``hidden_states(tokens)``: the full causal pass the learner uses;
* ``prefill(prompts, cache)`` / ``decode(tokens, cache)``: the sampler's KV-cache path.
  A decode step attends over cache plus the new token in one call; by the kernels'
  invariants (I2, I3: a decode step equals its row of the full causal pass) its rows equal
  the full pass's bit for bit.

The plain fp32 PyTorch path over the same parameters is ``rl.torch_model`` (the supervised
warm-up and the speed baseline; outside the invariants).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import precision_kernels as pk

from .policy import check_full_prompts

# The linears' precisions besides the compute precision (None): "fp8" runs each block linear W8A8 with
# e4m3 weights quantised per output row from the fp32 masters and e4m3 activations per token (pk.fp8_linear).
LINEAR_PRECISIONS = (None, "fp8")
FP8_FORMAT = torch.float8_e4m3fn


@dataclass
class ModelConfig:
    vocab_size: int = 13
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_seq_len: int = 16
    precision: str = "fp16"
    head_precision: str | None = None   # None: same as precision; "fp32" keeps the LM head in fp32
    linear_precision: str | None = None  # None: linears in `precision`; "fp8": W8A8 e4m3 (LM head excluded)
    mlp_ratio: int = 4
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        self.precision = pk.Precision.parse(self.precision).value
        if self.head_precision is not None:
            self.head_precision = pk.Precision.parse(self.head_precision).value
        if self.linear_precision not in LINEAR_PRECISIONS:
            raise ValueError(f"linear_precision must be one of {LINEAR_PRECISIONS}, got {self.linear_precision!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def dtype(self) -> torch.dtype:
        return pk.Precision.parse(self.precision).dtype

    @property
    def head_dtype(self) -> torch.dtype:
        return pk.Precision.parse(self.head_precision or self.precision).dtype


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in registration order (shared with the plain-torch baseline)."""
    V, D, T, Fd = cfg.vocab_size, cfg.d_model, cfg.max_seq_len, cfg.mlp_ratio * cfg.d_model
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (V, D), "pos_emb.weight": (T, D)}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn_norm.weight": (D,), b + "attn.qkv.weight": (3 * D, D), b + "attn.proj.weight": (D, D),
            b + "mlp_norm.weight": (D,), b + "mlp.fc.weight": (Fd, D), b + "mlp.proj.weight": (D, Fd),
        })
    shapes.update({"norm_f.weight": (D,), "lm_head.weight": (V, D)})
    return shapes


INIT_SCHEMES = ("scaled", "gpt2", "torch")


def init_parameters(cfg: ModelConfig, seed: int = 0, scheme: str = "torch") -> dict[str, torch.Tensor]:
    """Fresh fp32 parameters, drawn in ``param_shapes`` order from a generator seeded ``seed``.

    * "torch" (default): nn.Embedding N(0, 1) and nn.Linear's U(+-1/sqrt(fan_in)), LM
      head included. After the warm-up its policy is peaked enough that sampled answers
      are sometimes fully right (measured with the plain-torch path, benchmarks/torch_baseline.py).
    * "scaled": embeddings N(0, 1), linears N(0, 1/fan_in), residual
      projections further scaled by 1/sqrt(2 n_layers), a zero LM head (a uniform
      first policy), norms at 1.
    * "gpt2": N(0, 0.02) (DESIGN.md section 6: with binary reward it made no progress).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose from {INIT_SCHEMES}")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    resid_scale = 1.0 / math.sqrt(2 * cfg.n_layers)
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight") or name == "norm_f.weight":
            out[name] = torch.ones(shape)
            continue
        is_emb = name in ("tok_emb.weight", "pos_emb.weight")
        is_resid = name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight")
        fan_in = shape[1]
        if scheme == "scaled":
            if name == "lm_head.weight":
                out[name] = torch.zeros(shape)
                continue
            std = 1.0 if is_emb else 1.0 / math.sqrt(fan_in)
            out[name] = torch.randn(shape, generator=g) * (std * (resid_scale if is_resid else 1.0))
        elif scheme == "gpt2":
            out[name] = torch.randn(shape, generator=g) * (0.02 * (resid_scale if is_resid else 1.0))
        elif is_emb:
            out[name] = torch.randn(shape, generator=g)
        else:
            out[name] = (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
    return out


def to_head_precision(h: torch.Tensor, head_dtype: torch.dtype) -> torch.Tensor:
    """Hidden states in the LM head's precision: widening to fp32 is exact; any other change
    (fp32 to fp16/bf16, fp16 to bf16 and back) is a rounding, so it goes through ``pk.round_to``
    from fp32 (I4: every downcast is the project's RNE)."""
    if h.dtype == head_dtype:
        return h
    if head_dtype == torch.float32:
        return h.to(torch.float32)
    return pk.round_to(h.to(torch.float32), head_dtype)


BLOCK_LINEARS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight")
FP8_KEY = ":fp8"  # compute_weights' key suffix of a linear's (values, row scales) in fp8


class _Weight(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value)


class KVCache:
    """Per-layer keys and values in the compute precision, (batch, heads, max_seq_len, head_dim)."""

    def __init__(self, cfg: ModelConfig, batch: int, device: torch.device) -> None:
        shape = (batch, cfg.n_heads, cfg.max_seq_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=cfg.dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=cfg.dtype, device=device) for _ in range(cfg.n_layers)]
        self.length = 0


class TinyGPT(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0, init: str = "torch") -> None:
        super().__init__()
        self.cfg = cfg
        params = init_parameters(cfg, seed, init)
        self.tok_emb = _Weight(params["tok_emb.weight"])
        self.pos_emb = _Weight(params["pos_emb.weight"])
        self.blocks = nn.ModuleList()
        for i in range(cfg.n_layers):
            b = f"blocks.{i}."
            block = nn.Module()
            block.attn_norm = _Weight(params[b + "attn_norm.weight"])
            block.attn = nn.Module()
            block.attn.qkv = _Weight(params[b + "attn.qkv.weight"])
            block.attn.proj = _Weight(params[b + "attn.proj.weight"])
            block.mlp_norm = _Weight(params[b + "mlp_norm.weight"])
            block.mlp = nn.Module()
            block.mlp.fc = _Weight(params[b + "mlp.fc.weight"])
            block.mlp.proj = _Weight(params[b + "mlp.proj.weight"])
            self.blocks.append(block)
        self.norm_f = _Weight(params["norm_f.weight"])
        self.lm_head = _Weight(params["lm_head.weight"])

    # ---- weights in the compute precision -------------------------------------------------

    def compute_weights(self, linear_precision: str | None = "model") -> dict[str, torch.Tensor]:
        """Every weight rounded to its compute precision, in one ``round_to`` launch per precision.

        With fp8 linears (``linear_precision``, default the config's) each block linear's weight also gets
        its fp8 form under ``name + FP8_KEY``: ``pk.quantize_fp8`` of the fp32 master, per output row. The
        rounded weight stays in the dict: the straight-through gradient flows to the master through it.
        """
        if linear_precision == "model":
            linear_precision = self.cfg.linear_precision
        if linear_precision not in LINEAR_PRECISIONS:
            raise ValueError(f"linear_precision must be one of {LINEAR_PRECISIONS}, got {linear_precision!r}")
        named = dict(self.named_parameters())
        groups: dict[torch.dtype, list[str]] = {}
        for name in named:
            dtype = self.cfg.head_dtype if name == "lm_head.weight" else self.cfg.dtype
            groups.setdefault(dtype, []).append(name)
        out = {}
        for dtype, names in groups.items():
            flat = torch.cat([named[n].reshape(-1) for n in names])
            rounded = pk.round_to(flat, dtype)
            for name, part in zip(names, rounded.split([named[n].numel() for n in names])):
                out[name] = part.view(named[name].shape)
        if linear_precision == "fp8":
            for name in named:
                if name.endswith(BLOCK_LINEARS):
                    out[name + FP8_KEY] = pk.quantize_fp8(named[name].detach(), FP8_FORMAT, axis=-1)
        return out

    def _linear(self, w: dict, name: str, x: torch.Tensor) -> torch.Tensor:
        """A block linear: ``pk.linear`` in the compute precision, or W8A8 when ``w`` holds the weight's fp8 form."""
        fp8 = w.get(name + FP8_KEY)
        if fp8 is None:
            return pk.linear(x, w[name])
        return pk.fp8_linear(x, w[name], weight_fp8=fp8, dtype=FP8_FORMAT)

    # ---- shared layer code ----------------------------------------------------------------

    def _embed(self, w: dict, tokens: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return w["tok_emb.weight"][tokens] + w["pos_emb.weight"][positions]

    def _attention(self, w: dict, i: int, x: torch.Tensor, cache: KVCache | None, start: int) -> torch.Tensor:
        cfg, b = self.cfg, f"blocks.{i}."
        B, T, D = x.shape
        H, hd = cfg.n_heads, cfg.head_dim
        h = pk.rms_norm(x, w[b + "attn_norm.weight"], eps=cfg.norm_eps)
        qkv = self._linear(w, b + "attn.qkv.weight", h)                    # one launch for Q, K and V
        q, k, v = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        if cache is not None:
            cache.keys[i][:, :, start:start + T] = k
            cache.values[i][:, :, start:start + T] = v
            k, v = cache.keys[i][:, :, :start + T], cache.values[i][:, :, :start + T]
        # bottom-right causal: query t sits at key position start + t, so a decode step (T == 1) attends the
        # whole cache and its row equals the full pass's row (I3); one fused launch, no score buffer
        att = pk.attention(q, k, v, causal=True, scale=1.0 / math.sqrt(hd))     # (B, H, T, hd)
        att = att.transpose(1, 2).reshape(B, T, D)
        return self._linear(w, b + "attn.proj.weight", att)

    def _mlp(self, w: dict, i: int, x: torch.Tensor) -> torch.Tensor:
        b = f"blocks.{i}."
        h = pk.rms_norm(x, w[b + "mlp_norm.weight"], eps=self.cfg.norm_eps)
        m = torch.relu(self._linear(w, b + "mlp.fc.weight", h))
        return self._linear(w, b + "mlp.proj.weight", m * m)               # ReLU^2: exact glue

    def _layers(self, w: dict, tokens: torch.Tensor, cache: KVCache | None, start: int) -> torch.Tensor:
        if start + tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + tokens.shape[1]} tokens exceeds max_seq_len "
                             f"{self.cfg.max_seq_len}")
        x = self._embed(w, tokens, start)
        for i in range(self.cfg.n_layers):
            x = x + self._attention(w, i, x, cache, start)
            x = x + self._mlp(w, i, x)
        h = pk.rms_norm(x, w["norm_f.weight"], eps=self.cfg.norm_eps)
        return to_head_precision(h, self.cfg.head_dtype)

    # ---- entry points (the rl.policy.Policy interface, ``start`` aside: rl.policies) ---------

    def at_precision(self, precision: str) -> TinyGPT:
        """This model at another compute precision, sharing its fp32 master parameters: a sampler apart from the
        learner (``--rollout-precision``). Its LM head follows ``precision`` unless the config set the head apart."""
        view = copy.copy(self)  # a shallow copy: the same parameter and module dicts, so the same masters
        head = self.cfg.head_precision if self.cfg.head_precision != self.cfg.precision else None
        view.cfg = dataclasses.replace(self.cfg, precision=precision, head_precision=head)
        return view

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @contextlib.contextmanager
    def numerics(self, profile: str = "matched", *, audit: bool = False):
        """Every op here is a kernel or exact glue, so the profile alone sets the numerics (no mode, no report)."""
        with pk.use_profile(profile):
            yield None

    def hidden_states(self, tokens: torch.Tensor, weights: dict | None = None,
                      prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalised hidden states of a full causal pass, (B, T, d_model), head precision."""
        check_full_prompts(prompt_mask, tokens)
        return self._layers(weights or self.compute_weights(), tokens, None, 0)

    def new_cache(self, batch: int) -> KVCache:
        return KVCache(self.cfg, batch, self.tok_emb.weight.device)

    def prefill(self, prompts: torch.Tensor, cache: KVCache, weights: dict,
                prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompts through the model, fill the cache; returns the last position's hidden state (B, d)."""
        check_full_prompts(prompt_mask, prompts)
        h = self._layers(weights, prompts, cache, 0)
        cache.length = prompts.shape[1]
        return h[:, -1]

    def decode(self, tokens: torch.Tensor, cache: KVCache, weights: dict) -> torch.Tensor:
        """One decode step for tokens (B,) at position ``cache.length``; returns hidden states (B, d)."""
        h = self._layers(weights, tokens[:, None], cache, cache.length)
        cache.length += 1
        return h[:, 0]
