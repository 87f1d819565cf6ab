"""TinyGPT in plain PyTorch fp32: the same model as ``rl.model`` with torch's own ops (outside the invariants).

The same architecture and the same fp32 master parameters as ``rl.model.TinyGPT``
(``param_shapes`` names them), computed with torch's own ops: ``F.rms_norm``,
``F.scaled_dot_product_attention`` with a causal mask, ``F.linear``. Uses:

* the supervised warm-up, handed ``torch_forward(model)`` (``rl.train``);
* the plain-torch speed baseline (``benchmarks/torch_baseline.py``): ``generate`` (a
  KV-cache sampler drawing by Gumbel-max from torch's own random numbers) and
  ``sequence_logprobs`` (the learner's full-sequence pass), on the same parameters.

Every function takes the parameters as a mapping name -> tensor (``dict(model.named_parameters())``
or a plain dict for ``torch.func``-style training) and the model's ``ModelConfig``.
Greedy decoding is ``rl.decoding.greedy_decode`` over ``torch_logits``. Nothing here imports
precision_kernels: ``ModelConfig`` is only read (its sizes and ``norm_eps``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .rollout import Rollout

if TYPE_CHECKING:
    from .model import ModelConfig, TinyGPT

Params = Mapping[str, torch.Tensor]


def torch_hidden(params: Params, cfg: ModelConfig, tokens: torch.Tensor, caches: list[dict] | None = None,
                     pos: int = 0) -> torch.Tensor:
    """Final normalised hidden states (B, T, d_model) fp32 of ``tokens`` at positions pos..pos+T-1.

    With ``caches`` (one dict per layer) the new keys and values are appended to them and the
    queries attend over cache plus new keys; without, a plain causal pass from position 0.
    """
    B, T = tokens.shape
    H, hd, D = cfg.n_heads, cfg.head_dim, cfg.d_model
    if pos + T > cfg.max_seq_len:
        raise ValueError(f"sequence of {pos + T} tokens exceeds max_seq_len {cfg.max_seq_len}")
    x = params["tok_emb.weight"][tokens] + params["pos_emb.weight"][pos:pos + T]
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        h = F.rms_norm(x, (D,), params[b + "attn_norm.weight"], cfg.norm_eps)
        q, k, v = F.linear(h, params[b + "attn.qkv.weight"]).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        if caches is not None:
            if "k" in caches[i]:
                k = torch.cat([caches[i]["k"], k], dim=2)
                v = torch.cat([caches[i]["v"], v], dim=2)
            caches[i]["k"], caches[i]["v"] = k, v
        S = k.shape[2]  # keys at positions 0..S-1; queries at S-T..S-1
        allowed = torch.ones(T, S, dtype=torch.bool, device=tokens.device).tril(S - T)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + F.linear(att.transpose(1, 2).reshape(B, T, D), params[b + "attn.proj.weight"])
        h = F.rms_norm(x, (D,), params[b + "mlp_norm.weight"], cfg.norm_eps)
        x = x + F.linear(torch.relu(F.linear(h, params[b + "mlp.fc.weight"])).square(), params[b + "mlp.proj.weight"])
    return F.rms_norm(x, (D,), params["norm_f.weight"], cfg.norm_eps)


def torch_logits(params: Params, cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits (B, T, V) of a full causal pass."""
    return F.linear(torch_hidden(params, cfg, tokens), params["lm_head.weight"])


def torch_forward(model: TinyGPT) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens -> torch_logits`` over ``model``'s live fp32 parameters (what the warm-up trains)."""
    return lambda tokens: torch_logits(dict(model.named_parameters()), model.cfg, tokens)


@torch.no_grad()
def generate(params: Params, cfg: ModelConfig, prompts: torch.Tensor, max_new_tokens: int, *,
             temperature: float = 1.0, generator: torch.Generator | None = None, eos_id: int | None = None,
             pad_id: int | None = None) -> Rollout:
    """Batched KV-cache sampling in plain torch, with ``rl.sampler.generate``'s Rollout conventions.

    Gumbel-max on ``logits / temperature`` in fp32 (uniform noise from ``generator``); the
    reported log-prob is ``log_softmax(logits / T)`` of the drawn token.
    """
    B, P = prompts.shape
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    caches: list[dict] = [{} for _ in range(cfg.n_layers)]
    h = torch_hidden(params, cfg, prompts, caches, 0)[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    toks = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=prompts.device)
    logps = torch.zeros(B, max_new_tokens, device=prompts.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    for t in range(max_new_tokens):
        z = F.linear(h, params["lm_head.weight"]).float() / temperature
        u = torch.rand(z.shape, generator=generator, device=z.device).clamp_min(torch.finfo(torch.float32).tiny)
        nxt = (z - torch.log(-torch.log(u))).argmax(-1)
        lp = torch.log_softmax(z, -1).gather(-1, nxt[:, None])[:, 0]
        live = ~done
        toks[:, t] = torch.where(live, nxt, toks[:, t])
        logps[:, t] = torch.where(live, lp, logps[:, t])
        mask[:, t] = live
        if eos_id is not None:
            done = done | (live & (nxt == eos_id))
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        h = torch_hidden(params, cfg, toks[:, t:t + 1], caches, P + t)[:, -1]
    return Rollout(torch.cat([prompts, toks], dim=1), logps, mask)


def sequence_logprobs(params: Params, cfg: ModelConfig, tokens: torch.Tensor, prompt_len: int,
                      temperature: float = 1.0, return_entropy: bool = False):
    """Full-sequence pass, then each response token's log-prob (B, N) fp32 (and entropy with ``return_entropy``)."""
    logits = torch_logits(params, cfg, tokens[:, :-1])[:, prompt_len - 1:].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    lp = logp_all.gather(-1, tokens[:, prompt_len:, None])[..., 0]
    if return_entropy:
        return lp, -(logp_all.exp() * logp_all).sum(-1)
    return lp
