"""Scaled-dot-product attention in matched mode: torch's SDPA aten ops served by ``pk.attention``'s kernels.

What a dispatch mode sees of ``F.scaled_dot_product_attention`` on CPU (fp32, fp16, bf16; with or
without a mask, causal, GQA, decode) is ``aten._scaled_dot_product_flash_attention_for_cpu`` and, for
the gradient, ``..._for_cpu_backward``. Both are served here, **together or not at all**:

* the forward returns pk's output and a log-sum-exp in torch's layout; torch's own backward fed with
  them would compute gradients from numbers it did not make. So a served forward whose inputs
  require grad remembers its output (keyed by the output's storage, dropped when that storage is
  freed), with pk's own softmax statistics and the tile table it ran on;
* the backward runs on pk's backward kernels exactly when its ``out`` is such a remembered output,
  and then it never declines (arguments it cannot serve raise). Any other backward (its forward
  ran on torch) falls back to torch, which then has torch's own forward outputs.

On CUDA the ops are ``_scaled_dot_product_flash_attention`` (no mask), ``_efficient_attention`` and
``_cudnn_attention`` (an additive ``attn_bias``), each with its backward, served the same way from the
same plan. Their outputs take the layouts of the op's meta kernel (the output's strides, a log-sum-exp
padded or with a trailing dim, zero philox seeds and offsets: no dropout is served); the efficient
backward's ``grad_input_mask`` picks the gradients, and one for ``attn_bias`` is refused.

Semantics reproduced (the op's, not pk.attention's):

* ``is_causal`` aligns top-left (query t sees keys 0..t). pk's causal rule aligns bottom-right;
  the two agree when Tq == Tk. Otherwise the top-left rule is passed as a bool (Tq, Tk) mask.
  ``is_causal`` together with a mask is declined (torch's SDPA refuses that pair).
* ``attn_mask``: a bool mask arrives already converted by torch to an additive -inf/0 mask in the
  query dtype; both forms are served, broadcastable to (B, H, Tq, Tk).
* GQA: the op has no ``enable_gqa``; k and v arrive with Hkv heads, so H != Hkv is GQA.
* ``scale``: None is 1/sqrt(D), used as its fp32 value, as torch's CPU kernel does.
* A row with no key to attend gives 0; its log-sum-exp is 0, as torch's.
* The log-sum-exp is (B, H, Tq) fp32 with strides (H*Tq, 1, H), torch's layout.
* Left padding: each batch item's first real key (pk's ``key_start``) is read from the mask as the
  leading keys that every query row of the item, in every head, masks with -inf. Masking them is
  what the mask already does, so this is exact; it makes the key blocks item-relative, so a prompt
  alone gives the bits of itself inside a left-padded batch.

Declined (run on torch, recorded as uncovered): ``dropout_p > 0``, a mask that requires grad, dtypes
or devices pk lacks, shapes pk.attention does not take, and masks whose live rows start at different
keys after the item's first real key (sliding-window attention, packed sequences): their key blocks
would be counted from different origins in a decode step with a cropped cache than in the full
pass, so decode cannot equal prefill there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import profiles
from ..ops.attention import MAX_HEAD_DIM
from ._common import Decline, ForwardMemo, check_tensors, fp32_scalar

_NEG_INF = float("-inf")
aten = torch.ops.aten


@dataclass(frozen=True)
class _Plan:
    """How one SDPA call runs on pk: pk::attention's mask, key_start, causal flag and fp32-valued scale."""

    mask: torch.Tensor | None
    key_start: torch.Tensor | None
    causal: bool
    scale: float


def _check_inputs(q, k, v, attn_mask) -> None:
    check_tensors(q, k, v)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            check_tensors(attn_mask)
        elif attn_mask.device != q.device:
            raise Decline(f"attn_mask on {attn_mask.device}, q on {q.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise Decline(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise Decline(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} are not 4-D")
    (b, h, _, d), (bk, hkv, _, dk) = q.shape, k.shape
    if k.shape != v.shape or bk != b or dk != d:
        raise Decline(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} are not (B, H, Tq, D), "
                      f"(B, Hkv, Tk, D) x2")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise Decline(f"head dim {d} outside [1, {MAX_HEAD_DIM}]")
    if hkv == 0 or h % hkv:
        raise Decline(f"H={h} is not a multiple of Hkv={hkv}")
    if attn_mask is not None:
        full = (b, h, q.shape[2], k.shape[2])
        shape = tuple(attn_mask.shape)
        if len(shape) > 4 or any(m not in (1, f) for m, f in zip(shape[::-1], full[::-1])):
            raise Decline(f"attn_mask of shape {shape} does not broadcast to (B, H, Tq, Tk) = {full}")
        if attn_mask.requires_grad:
            raise Decline("attn_mask requires grad (pk computes no mask gradient)")


def _key_start(live: torch.Tensor, batch: int) -> torch.Tensor:
    """Each item's first real key: the leading keys that every (head, query row) of the item masks."""
    tk = live.shape[-1]
    any_row = live.any(dim=1).any(dim=1)                               # (Bm, Tk)
    first = torch.where(any_row.any(-1), any_row.to(torch.int8).argmax(-1), tk)
    return first.to(torch.int64).expand(batch).contiguous()


def _check_rows_start_together(live: torch.Tensor, key_start: torch.Tensor) -> None:
    """Every row with a live key must see its item's first real key (left padding, causal); else decline."""
    if live.shape[-1] == 0:
        return
    row_live = live.any(-1)                                            # (Bm, Hm, Tqm)
    row_first = live.to(torch.int8).argmax(-1)
    ks = key_start[: live.shape[0]].view(-1, 1, 1)
    if bool((row_live & (row_first != ks)).any()):
        raise Decline("attn_mask rows start at different keys after the item's first real key (a sliding "
                      "window or packed sequences): decode with a cropped cache cannot equal the full pass")


def plan(q, k, v, dropout_p, is_causal, attn_mask, scale) -> _Plan:
    """The pk::attention arguments that reproduce this SDPA call, or ``Decline``."""
    if dropout_p != 0:
        raise Decline(f"dropout_p={dropout_p} (pk attention has no dropout)")
    _check_inputs(q, k, v, attn_mask)
    if is_causal and attn_mask is not None:
        raise Decline("is_causal=True together with attn_mask")
    tq, tk = q.shape[2], k.shape[2]
    s = fp32_scalar("scale", 1.0 / math.sqrt(q.shape[3]) if scale is None else scale)
    if is_causal and tq != tk:
        # top-left: query t sees keys 0..t
        rows = torch.arange(tq, device=q.device)[:, None]
        attn_mask = torch.arange(tk, device=q.device)[None, :] <= rows
    elif is_causal:
        return _Plan(None, None, True, s)
    if attn_mask is None:
        return _Plan(None, None, False, s)
    live = attn_mask if attn_mask.dtype == torch.bool else attn_mask != _NEG_INF
    while live.dim() < 4:
        live = live.unsqueeze(0)
    key_start = _key_start(live, q.shape[0])
    _check_rows_start_together(live, key_start)
    return _Plan(attn_mask, key_start if bool(key_start.any()) else None, False, s)


# Served forwards whose inputs require grad: output -> (pk's softmax stats, tile table).
_SERVED_FORWARDS = ForwardMemo()


def _torch_lse_layout(lse: torch.Tensor) -> torch.Tensor:
    """pk's (B, H, Tq) lse in torch's layout (strides (H*Tq, 1, H)), 0 for rows with no key as torch gives."""
    b, h, tq = lse.shape
    out = torch.empty((b, tq, h), dtype=torch.float32, device=lse.device).transpose(1, 2)
    out.copy_(torch.where(lse == _NEG_INF, 0.0, lse))
    return out


def _remember(out: torch.Tensor, stats: torch.Tensor, q, k, v) -> None:
    """Keep pk's softmax stats and tile table for the backward of ``out``, while its storage lives (only when grad
    may flow)."""
    if (q.requires_grad or k.requires_grad or v.requires_grad) and out.numel():
        _SERVED_FORWARDS.keep(out, (stats, profiles.table_backend()))


def _flash_attention_for_cpu(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    p = plan(query, key, value, dropout_p, is_causal, attn_mask, scale)
    out, lse, stats = torch.ops.pk.attention(query, key, value, p.mask, p.key_start, p.causal, p.scale)
    _remember(out, stats, query, key, value)
    return out, _torch_lse_layout(lse)


def _served_backward(grad_out, query, key, value, out, dropout_p, is_causal, attn_mask, scale):
    """(dq, dk, dv) on pk for a forward pk served (``Decline`` when it ran on torch; never declines otherwise)."""
    saved = _SERVED_FORWARDS.get(out)
    if saved is None:
        raise Decline("the forward ran on torch (its outputs are torch's), so its backward runs on torch")
    stats, table = saved
    try:
        p = plan(query, key, value, dropout_p, is_causal, attn_mask, scale)
    except Decline as why:  # the forward was served with these arguments: never hand its outputs to torch
        raise RuntimeError(f"matched mode: the SDPA backward of a forward served by pk cannot be served ({why}); "
                           f"torch's backward would read pk's outputs") from None
    if grad_out.shape != query.shape or grad_out.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise RuntimeError(f"matched mode: SDPA backward grad_out {tuple(grad_out.shape)} {grad_out.dtype} for a "
                           f"forward served by pk with q {tuple(query.shape)}")
    return torch.ops.pk.attention_backward(grad_out, query, key, value, stats, p.mask, p.key_start, p.causal,
                                           p.scale, table)


def _flash_attention_for_cpu_backward(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *,
                                      attn_mask=None, scale=None):
    return _served_backward(grad_out, query, key, value, out, dropout_p, is_causal, attn_mask, scale)


# ---- the CUDA ops: the same plan; every output in the layout the op's meta kernel gives -----------------------


def _meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def _cuda_forward(func, args, kwargs, q, k, v, attn_mask, dropout_p, is_causal, scale):
    """pk's output and lse poured into the outputs torch's op would return (shapes, strides, extra outputs)."""
    p = plan(q, k, v, dropout_p, is_causal, attn_mask, scale)
    out, lse, stats = torch.ops.pk.attention(q, k, v, p.mask, p.key_start, p.causal, p.scale)
    like = func(*[_meta(a) for a in args], **{n: _meta(a) for n, a in kwargs.items()})
    results = []
    for i, m in enumerate(like):
        if not isinstance(m, torch.Tensor):
            results.append(m)
            continue
        t = torch.empty_strided(m.shape, m.stride(), dtype=m.dtype, device=q.device).zero_()
        if i == 0:
            t.copy_(out)
        elif i == 1 and t.numel():
            # (B, H, Tq), (B, H, Tq padded) or (B, H, Tq, 1): pk's rows first, 0 for a row with no key
            t.view(t.shape[0], t.shape[1], -1)[:, :, : lse.shape[2]].copy_(torch.where(lse == _NEG_INF, 0.0, lse))
        results.append(t)
    _remember(results[0], stats, q, k, v)
    return tuple(results)


def _flash_attention(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    if return_debug_mask:
        raise Decline("return_debug_mask=True")
    args = (query, key, value, dropout_p, is_causal, return_debug_mask)
    return _cuda_forward(aten._scaled_dot_product_flash_attention.default, args, {"scale": scale},
                         query, key, value, None, dropout_p, is_causal, scale)


def _flash_attention_backward(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k,
                              dropout_p, is_causal, philox_seed, philox_offset, *, scale=None):
    return _served_backward(grad_out, query, key, value, out, dropout_p, is_causal, None, scale)


def _efficient_attention(query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *,
                         scale=None):
    args = (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal)
    return _cuda_forward(aten._scaled_dot_product_efficient_attention.default, args, {"scale": scale},
                         query, key, value, attn_bias, dropout_p, is_causal, scale)


def _efficient_attention_backward(grad_out_, query, key, value, attn_bias, out, logsumexp, philox_seed,
                                  philox_offset, dropout_p, grad_input_mask, is_causal=False, *, scale=None):
    if _SERVED_FORWARDS.get(out) is not None and grad_input_mask[3]:
        raise RuntimeError("matched mode: the SDPA backward asks for attn_bias's gradient, which pk does not compute")
    dq, dk, dv = _served_backward(grad_out_, query, key, value, out, dropout_p, is_causal, attn_bias, scale)
    return (dq if grad_input_mask[0] else None, dk if grad_input_mask[1] else None,
            dv if grad_input_mask[2] else None, None)


def _cudnn_attention(query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False,
                     return_debug_mask=False, *, scale=None):
    if return_debug_mask:
        raise Decline("return_debug_mask=True")
    args = (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, return_debug_mask)
    return _cuda_forward(aten._scaled_dot_product_cudnn_attention.default, args, {"scale": scale},
                         query, key, value, attn_bias, dropout_p, is_causal, scale)


def _cudnn_attention_backward(grad_out, query, key, value, out, logsumexp, philox_seed, philox_offset, attn_bias,
                              cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, *, scale=None):
    return _served_backward(grad_out, query, key, value, out, dropout_p, is_causal, attn_bias, scale)


# Their backward always runs pk's matched kernels, whatever profile is active (ops/attention.py).
SDPA_BACKWARDS = frozenset(name for name in (
    "aten._scaled_dot_product_flash_attention_for_cpu_backward.default",
    "aten._scaled_dot_product_flash_attention_backward.default",
    "aten._scaled_dot_product_efficient_attention_backward.default",
    "aten._scaled_dot_product_cudnn_attention_backward.default",
))

SDPA_HANDLERS = {
    "aten._scaled_dot_product_flash_attention_for_cpu.default": _flash_attention_for_cpu,
    "aten._scaled_dot_product_flash_attention_for_cpu_backward.default": _flash_attention_for_cpu_backward,
    "aten._scaled_dot_product_flash_attention.default": _flash_attention,
    "aten._scaled_dot_product_flash_attention_backward.default": _flash_attention_backward,
    "aten._scaled_dot_product_efficient_attention.default": _efficient_attention,
    "aten._scaled_dot_product_efficient_attention_backward.default": _efficient_attention_backward,
    "aten._scaled_dot_product_cudnn_attention.default": _cudnn_attention,
    "aten._scaled_dot_product_cudnn_attention_backward.default": _cudnn_attention_backward,
}
